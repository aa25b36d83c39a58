"""A label project made in a test, and a real server for it on a free loopback port."""

from __future__ import annotations

import json
import threading
from pathlib import Path

UNTRUSTED = ['<script>window.__pwned = 1</script>스크립트 답', '<img src=x onerror="window.__pwned = 2">그림 답',
             '<a href="javascript:window.__pwned = 3">링크</a> 답']


def candidates_file(path: Path, items: int = 6, k: int = 3, untrusted: bool = False) -> Path:
    records = [{"prompt": f"질문 {n}: 바다는 왜 파란가요?", "completions": [f"답 {n}-{a}: 햇빛이 흩어지기 때문이에요." for a in range(k)]}
               for n in range(items)]
    if untrusted:  # every record: whichever comes first is markup
        records = [{"prompt": f"<b>굵게</b> 보이면 안 되는 질문 {n}", "completions": [f"{text} {n}" for text in UNTRUSTED[:k]]}
                   for n in range(items)]
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def make_project(tmp_path: Path, items: int = 6, k: int = 3, people: tuple[str, ...] = ("민지", "준호", "서연"), per_item: int = 2,
                 untrusted: bool = False, **settings):
    """(project directory, store, {name: annotator})."""
    from kochat_human.project import LabelProjectConfig, new_project, open_project

    project = tmp_path / "project"
    new_project(LabelProjectConfig(out=project, candidates=candidates_file(tmp_path / "candidates.jsonl", items, k, untrusted),
                                   annotators_per_item=per_item, **settings))
    store = open_project(project)
    return project, store, {person.name: person for person, _ in store.invite(list(people))}


class RunningServer:
    """The label app under uvicorn in a thread, on a port the kernel picks; `url` once it answers."""

    def __init__(self, project: Path, store):
        import uvicorn

        from kochat_human.app import create_app
        from kochat_human.server import bind

        self.socket = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(project, store), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
