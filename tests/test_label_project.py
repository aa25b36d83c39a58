"""`kochat label new|invite|status|export` as a user runs them: answers from stages or candidates, reproducible
items, clear refusals, and an export that `kochat data build` and `kochat train rm` read with no edit."""

import json
import sqlite3

import pytest

from conftest import TINY
from label_helpers import candidates_file, make_project

from kochat_eval.agreement import aggregate_ranking, preference_pairs
from kochat_human.project import open_project


def items_of(project):
    return sqlite3.connect(project / "label.sqlite").execute("SELECT id, position, prompt, completions, sources FROM items ORDER BY position").fetchall()


def rank(store, person, item, answer_ranking, vote_id, seconds=2.0):
    """Vote as a person would: the ranks of the answers on their screen for the wanted rank of each answer."""
    shown, order = store.next_item(person)
    assert shown.id == item.id
    return store.record(person, item.id, "rank", [answer_ranking[answer] for answer in order], vote_id, seconds)


def test_one_stage_sampled_k_times_gives_the_same_items_for_the_same_seed(run_cli, tiny_base, sample_data, tmp_path):
    flags = ["--stage", f"base={tiny_base}", "--prompts", sample_data, "--k", "3", "--do-sample", "--max-new-tokens", "6"]
    code, out, err = run_cli("label", "new", "--out", tmp_path / "one", *flags, "--seed", "3")
    assert code == 0, err
    assert "items of 3 answers" in out
    assert run_cli("label", "new", "--out", tmp_path / "two", *flags, "--seed", "3")[0] == 0
    assert run_cli("label", "new", "--out", tmp_path / "other", *flags, "--seed", "4")[0] == 0
    one, two, other = items_of(tmp_path / "one"), items_of(tmp_path / "two"), items_of(tmp_path / "other")
    assert one == two and len(one) >= 2
    assert all(len(json.loads(completions)) == 3 and json.loads(sources) == ["base"] * 3 for *_, completions, sources in one)
    assert [row[2] for row in one] != [row[2] for row in other] or [row[3] for row in one] != [row[3] for row in other]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text(encoding="utf-8"))
    import hashlib

    assert manifest["sources"]["prompts"]["sha256"] == hashlib.sha256((sample_data / "manifest.json").read_bytes()).hexdigest()
    assert manifest["sources"]["stages"]["base"]["sha256"] == hashlib.sha256((tiny_base / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["decoding"]["do_sample"] is True and manifest["decoding"]["max_new_tokens"] == 6 and manifest["seed"] == 3
    assert manifest["k"] == [3] and manifest["counts"]["items"] == len(one)
    assert manifest["sources"]["prompts"]["format"] == "build eval split"

    # --split train: prompts whose rankings a rebuild keeps for training
    import datasets

    assert run_cli("label", "new", "--out", tmp_path / "train", *flags, "--split", "train", "--max-prompts", "3")[0] == 0
    train_prompts = set(datasets.load_from_disk(str(sample_data / "ppo"))["train"]["prompt"])
    assert {row[2] for row in items_of(tmp_path / "train")} <= train_prompts and len(items_of(tmp_path / "train")) == 3
    assert not {row[2] for row in one} & train_prompts


def test_several_stages_answer_once_each_and_status_says_whose_answer_people_ranked_first(run_cli, tiny_base, kogpt2_shaped, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("바다는 왜 파래?\n바다는  왜 파래?\n\n지구는 왜 돌아?\n사과는 무슨 색이야?\n", encoding="utf-8")
    code, out, err = run_cli("label", "new", "--out", tmp_path / "p", "--stage", f"base={tiny_base}", "--stage", f"kogpt={kogpt2_shaped}",
                             "--prompts", prompts, "--max-new-tokens", "5", "--annotators-per-item", "1")
    assert code == 0, err
    assert "1 duplicates folded" in out and "3 items of 2 answers" in out
    store = open_project(tmp_path / "p")
    person = store.invite(["민지"])[0][0]
    for number, item in enumerate(store.items()):
        assert item.sources == ["base", "kogpt"]
        rank(store, person, item, [0, 1] if number < 2 else [0, 0], f"vote-{number:04d}")
    code, out, err = run_cli("label", "status", tmp_path / "p", "--json")
    status = json.loads(out)
    first = {row["stage"]: row["first_share"] for row in status["stage_first"]}
    assert first == {"base": pytest.approx(2.5 / 3), "kogpt": pytest.approx(0.5 / 3)}  # the tie shares its first place
    assert status["votes"] == 3 and status["items_done"] == 3 and status["annotators"][0]["median_seconds"] == 2.0

    # TRL prompt-only conversations: answered in their template, shown as dialogue text, exported as messages
    conversations = tmp_path / "conversations.jsonl"
    dialogue = [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "안녕하세요."}, {"role": "user", "content": "바다는 왜 파래?"}]
    conversations.write_text(json.dumps({"prompt": dialogue}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run_cli("label", "new", "--out", tmp_path / "chat", "--stage", f"base={tiny_base}", "--prompts", conversations,
                   "--do-sample", "--max-new-tokens", "4", "--annotators-per-item", "1")[0] == 0
    store = open_project(tmp_path / "chat")
    (item,) = store.items()
    assert "바다는 왜 파래?" in item.prompt and json.loads(item.prompt_messages) == dialogue
    person = store.invite(["민지"])[0][0]
    rank(store, person, item, [1, 0], "vote-chat-1")
    assert run_cli("label", "export", tmp_path / "chat", "--out", tmp_path / "chat.jsonl")[0] == 0
    assert json.loads((tmp_path / "chat.jsonl").read_text(encoding="utf-8"))["prompt"] == dialogue


def test_candidates_from_the_unranked_fork_file(run_cli, shared_data, tmp_path):
    source = shared_data / "odd" / "qwawa_sft_completions_no_ranking.json"
    code, out, err = run_cli("label", "new", "--out", tmp_path / "p", "--candidates", source)
    assert code == 1 and "field 'completion_1': missing" in err and "pass --on-invalid skip" in err.splitlines()[-1]
    code, out, err = run_cli("label", "new", "--out", tmp_path / "p", "--candidates", source, "--on-invalid", "skip", "--max-prompts", "50")
    assert code == 0, err
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text(encoding="utf-8"))
    rejects = [json.loads(line) for line in (tmp_path / "p" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    # 155 records carry one answer (nothing to rank); the other 221, with 2 … 8 answers, are labelled
    assert manifest["counts"]["read"] == 376 and manifest["counts"]["rejected"] == len(rejects) == 155
    assert all(reject["record"]["completion_0"] for reject in rejects)  # the raw record is kept
    assert manifest["counts"]["items"] == 50 and set(manifest["k"]) <= set(range(2, 9))


def test_bad_candidates_are_reported_together_with_their_lines(run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "질문", "completions": ["하나", "둘"]}\n{"prompt": "질문", "completions": ["하나"]}\n'
                   '{"prompt": "", "completions": ["a", "b"]}\n{"prompt": "질문", "completions": "하나"}\n[1]\n', encoding="utf-8")
    code, _, err = run_cli("label", "new", "--out", tmp_path / "p", "--candidates", bad)
    assert code == 1 and "Traceback" not in err
    assert "bad.jsonl:2: record 2: field 'completions': expected 2 … 9 answers to rank, got 1" in err
    assert "bad.jsonl:3:" in err and "bad.jsonl:4:" in err and "bad.jsonl:5:" in err
    assert "4 of 5 candidate records invalid" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("arguments, needle", [
    (["--candidates", "CANDIDATES", "--k", "5"], "--k: expected 2 … 4"),
    (["--candidates", "CANDIDATES", "--stage", "a=BASE"], "one of the two"),
    (["--stage", "a=BASE"], "--stage needs --prompts"),
    (["--stage", "a=BASE", "--prompts", "CANDIDATES"], "add --do-sample"),
    (["--stage", "a=BASE", "--stage", "b=BASE", "--prompts", "CANDIDATES", "--k", "3"], "several stages answer once each"),
    (["--stage", "a", "--prompts", "CANDIDATES"], "expected NAME=DIR"),
    (["--candidates", "CANDIDATES", "--annotators-per-item", "0"], "--annotators-per-item: expected an integer ≥ 1"),
    (["--candidates", "CANDIDATES", "--temperature", "0.5"], "no effect without do_sample"),
    (["--candidates", "CANDIDATES", "--do-sample"], "decoding flags go with --stage"),
    (["--candidates", "NOWHERE.jsonl"], "NOWHERE.jsonl"),
    (["--stage", "a=NOWHERE", "--prompts", "CANDIDATES", "--do-sample"], "NOWHERE"),
])
def test_wrong_label_new_is_one_line(run_cli, tmp_path, tiny_base, arguments, needle):
    source = candidates_file(tmp_path / "c.jsonl")
    filled = [str(argument).replace("CANDIDATES", str(source)).replace("BASE", str(tiny_base)).replace("NOWHERE", str(tmp_path / "nowhere"))
              for argument in arguments]
    code, _, err = run_cli("label", "new", "--out", tmp_path / "p", *filled)
    assert code == 2 and "Traceback" not in err, err
    assert needle.replace("NOWHERE", str(tmp_path / "nowhere")) in err
    assert len(err.strip().splitlines()) == 1, err


def test_other_label_commands_refuse_in_one_line(run_cli, tmp_path):
    project, store, _ = make_project(tmp_path)
    (tmp_path / "file").write_text("x")
    for arguments, needle in ((["status", tmp_path / "nowhere"], "no such directory"), (["status", tmp_path / "file"], "is a file"),
                              (["status", tmp_path], "not a label project"), (["invite", project, ""], "expected 1 … 64 characters"),
                              (["export", project, "--out", tmp_path / "no" / "x.jsonl"], "no such directory"),
                              (["export", project, "--out", tmp_path], "is a directory"),
                              (["export", project, "--out", tmp_path / "e.jsonl", "--min-annotators", "0"], "expected an integer ≥ 1"),
                              (["serve", project, "--host", "0.0.0.0.0"], "not an address")):
        code, _, err = run_cli("label", *arguments)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (arguments, err)
    (tmp_path / "bare").mkdir()
    bare, _, _ = make_project(tmp_path / "bare", people=())
    code, _, err = run_cli("label", "serve", bare, "--host", "0.0.0.0")
    assert code == 2 and "invite people first" in err


def test_invite_gives_each_person_one_link_and_keeps_it(run_cli, tmp_path):
    project, _, _ = make_project(tmp_path, people=())
    code, out, _ = run_cli("label", "invite", project, "민지", "준호", "--json")
    first = [json.loads(line) for line in out.splitlines()]
    assert [person["name"] for person in first] == ["민지", "준호"] and len({person["token"] for person in first}) == 2
    assert all(person["path"] == f"/label/{person['token']}" and len(person["token"]) >= 24 for person in first)
    code, out, _ = run_cli("label", "invite", project, "민지", "--json")
    assert json.loads(out) == first[0]


def test_overwrite_never_replaces_peoples_votes(run_cli, tmp_path):
    project, store, people = make_project(tmp_path)
    source = tmp_path / "candidates.jsonl"
    assert run_cli("label", "new", "--out", project, "--candidates", source)[0] == 2  # not empty
    assert run_cli("label", "new", "--out", project, "--candidates", source, "--overwrite")[0] == 0  # no votes yet: replaced
    store = open_project(project)
    person = store.invite(["민지"])[0][0]
    item = store.items()[0]
    rank(store, person, item, [0, 1, 2], "vote-0001")
    code, _, err = run_cli("label", "new", "--out", project, "--candidates", source, "--overwrite")
    assert code == 2 and "holds 1 votes of people" in err
    assert len(open_project(project).votes()) == 1


def test_the_export_aggregates_people_and_trains_a_reward_model_with_no_edit(run_cli, tiny_base, tmp_path):
    project, store, people = make_project(tmp_path, items=6, k=3, per_item=2)
    minji, junho, seoyeon = people.values()
    items = store.items()
    wanted = {  # the rank of each answer, in the item's own order, per person
        items[0].id: {minji: [0, 1, 2], junho: [1, 0, 2]},  # → (1, 1, 4)/2: a tie for first
        items[1].id: {minji: [0, 1, 1], seoyeon: [1, 0, 2]},  # → (1, 3/2, 7/2)/2: strict
        items[2].id: {junho: [2, 1, 0], seoyeon: [2, 1, 0]},
        items[3].id: {minji: [0, 2, 1]},  # one person only
    }
    number = 0
    for item in items[:4]:
        for person, ranking in wanted[item.id].items():
            rank(store, person, item, ranking, f"vote-{number:04d}")
            number += 1
    skipped, order = store.next_item(seoyeon)
    store.record(seoyeon, skipped.id, "skip", None, "skip-0001", 1.0)
    flagged, _ = store.next_item(minji)
    assert flagged.id == items[4].id
    store.record(minji, flagged.id, "flag", None, "flag-0001", 1.0)

    out = tmp_path / "human_rm.jsonl"
    code, printed, err = run_cli("label", "export", project, "--out", out)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [record["ranking"] for record in records] == [[0, 0, 2], [0, 1, 2], [2, 1, 0], [0, 2, 1]]
    assert records[0] == {"prompt": items[0].prompt, **{f"completion_{i}": text for i, text in enumerate(items[0].completions)},
                          "ranking": [0, 0, 2]}
    assert [record["ranking"] for record in records] == [aggregate_ranking(list(wanted[item.id].values())) for item in items[:4]]
    votes = [json.loads(line) for line in (tmp_path / "human_rm.jsonl.votes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(votes) == 9 and {vote["kind"] for vote in votes} == {"rank", "skip", "flag"}
    assert "left out: " in printed and "flagged" in printed
    assert run_cli("label", "export", project, "--out", out)[0] == 2  # exists: --overwrite to replace
    code, _, _ = run_cli("label", "export", project, "--out", out, "--min-annotators", "2", "--overwrite")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3

    # the loop: export → build → train a reward model
    expected_pairs = sum(len(preference_pairs(ranking)) for ranking in [[0, 0, 2], [0, 1, 2], [2, 1, 0]])
    data = tmp_path / "data"
    code, _, err = run_cli("data", "build", "--rm", out, "--out", data, "--eval-ratio", "0")
    assert code == 0, err
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rm"]["rows"]["train"] == manifest["rm"]["pairs"]["written"] == expected_pairs == 8
    assert manifest["rm"]["pairs"]["ties"] == 1
    from kochat_train.rm import RewardConfig, train_rm

    result = train_rm(RewardConfig(data=data, out=tmp_path / "rm", model=str(tiny_base), max_steps=2, **TINY))
    assert (result.out / "model.safetensors").is_file()

    trl = tmp_path / "pairs.jsonl"
    assert run_cli("label", "export", project, "--out", trl, "--format", "trl")[0] == 0
    pairs = [json.loads(line) for line in trl.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == expected_pairs + len(preference_pairs([0, 2, 1]))
    assert pairs[0] == {"prompt": items[0].prompt, "chosen": items[0].completions[0], "rejected": items[0].completions[2]}
    code, _, err = run_cli("data", "build", "--rm", trl, "--out", tmp_path / "trl_data", "--eval-ratio", "0")
    assert code == 0, err
