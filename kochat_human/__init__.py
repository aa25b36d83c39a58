"""People in the loop: label projects (rank answers in a browser, export KoChatGPT RM records), one SQLite file each.

A floor above `kochat_eval` (whose pure statistics it uses) and `kochat_train` (whose one generation path writes
the answers), below the `kochat` CLI.
"""
