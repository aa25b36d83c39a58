"""The `kochat` command: one entry point over kochat_data, kochat_train and kochat_eval."""
