"""`tinystories serve`: a local web page to try the run's models side by side, and grade them.

    tinystories serve --run-dir runs/quickstart            # then open http://127.0.0.1:8000/

The page (tryout/page.html) lists the run's models (pretrain/<size>, sft/<size>); pick some, type
a story beginning or an instruction, and every picked model's completion appears in its own
column as it finishes (one request per model, so a fast model does not wait for a slow one).
Each finished column has a "grade" button that sends that completion to the configured judge
(the `judge` and `llm` sections of the run's config, as `tinystories judge` uses them).

Completions are framed and sampled exactly as `tinystories sample` does (tryout/sample.py),
with the same seeds, so a story seen on the page can be reproduced on the command line.
Grades are read from the judge's written reply (sampled scoring, eval/judge.py's request and
parser for one completion), whatever `judge.scoring` says: one button press, one request.

The server is FastAPI on uvicorn, bound to 127.0.0.1 unless --host says otherwise: it has no
authentication, so anyone who can reach the port can run the models and the judge.
Models are loaded on first use and kept; one completion is sampled at a time.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tinystories.errors import UserError
from tinystories.tryout.sample import MODEL_KINDS, Prompt, Sampling, TryModel, check_model_names, load_model, sample_one

PAGE = "page.html"
MAX_PROMPT_CHARS = 4000  # a beginning or instruction longer than this is a paste mistake, not a prompt


class SampleRequest(BaseModel):
    """POST /api/sample: one model, one prompt, the sampling settings (defaults as `tinystories sample`)."""

    model: str
    text: str = Field("", max_length=MAX_PROMPT_CHARS)
    instruct: bool = False
    temperature: float = Field(Sampling.temperature, ge=0)
    top_p: float = Field(Sampling.top_p, gt=0, le=1)
    seed: int = Sampling.seed
    max_new_tokens: int = Field(Sampling.max_new_tokens, ge=1)


class GradeRequest(BaseModel):
    """POST /api/grade: one completion and what it was asked for."""

    task: Literal["continue", "instruct"]
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    text: str


class ModelPool:
    """The run's models, loaded on first use; one sampling at a time (torch runs one model on
    all cores anyway, and two at once would only share them)."""

    def __init__(self, run_dir: Path, device: str):
        from tinystories.eval.complete import resolve_device

        self.run_dir = run_dir
        self.names = check_model_names(run_dir, [])
        self.device = resolve_device(device, "--device")
        self._loaded: dict[str, TryModel] = {}
        self._lock = threading.Lock()

    def kind(self, name: str) -> str:
        """base | instruct"""
        return MODEL_KINDS[name.split("/", 1)[0]]

    def sample(self, name: str, prompt: Prompt, settings: Sampling) -> dict:
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_model(self.run_dir, name, self.device)
            return sample_one(self._loaded[name], prompt, settings).as_dict()


class Judge:
    """The configured judge, for one completion at a time. Its client is made on first use and
    only ever touched from one worker thread: the LLM answer cache is SQLite, whose connection
    belongs to the thread that opened it, while the web server runs each request on any thread."""

    def __init__(self, cfg, run_dir: Path):
        from concurrent.futures import ThreadPoolExecutor

        from tinystories.eval.judge import SECTION

        self.cfg = cfg
        self.run_dir = run_dir
        self.llm_cfg = cfg.llm_for(SECTION)
        self._client = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")

    def describe(self) -> dict:
        return {"backend": self.llm_cfg.backend, "model": self.llm_cfg.model, "mode": self.llm_cfg.mode}

    def grade(self, task: str, prompt: str, text: str) -> dict:
        """Grades, age group and assessment of one completion; UserError when the judge gave none."""
        return self._worker.submit(self._grade, task, prompt, text).result()

    def _grade(self, task: str, prompt: str, text: str) -> dict:
        from tinystories.eval.grading import CATEGORIES
        from tinystories.eval.judge import NAME, make_request, reply_validator
        from tinystories.io.layout import LLM_CACHE_DIR
        from tinystories.llm import make_client
        from tinystories.pipeline.ids import derive_seed, fingerprint

        if self._client is None:
            self._client = make_client(self.llm_cfg, self.run_dir / LLM_CACHE_DIR)
        item = {"key": f"serve|{fingerprint(task, prompt, text, length=16)}", "source": {"task": task, "prompt": prompt}, "text": text}
        mode = self.llm_cfg.mode
        request = make_request(item, self.cfg.judge, mode, derive_seed(self.cfg.seed, NAME))
        [response] = self._client.complete([request], validate=reply_validator(mode), description="grade")
        if not response.ok:
            raise UserError(f"the judge ({self.llm_cfg.backend}, {self.llm_cfg.model}) gave no grades: {response.error}")
        value = response.value
        return {"grades": {k: value[k] for k in CATEGORIES}, "age_group": value["age_group"], "assessment": value["assessment"], "judge": self.describe()}

    def close(self) -> None:
        if self._client is not None:
            self._worker.submit(self._client.close).result()
        self._worker.shutdown()


def create_app(run_dir: Path, cfg, device: str = "auto"):
    """The FastAPI app: GET / (the page), GET /api/models, POST /api/sample, POST /api/grade."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    pool = ModelPool(run_dir, device)
    judge = Judge(cfg, run_dir)
    page = resources.files("tinystories.tryout").joinpath(PAGE).read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        judge.close()

    app = FastAPI(title="tinystories: try a model", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/models")
    def models() -> dict:
        return {
            "run_dir": str(run_dir),
            "models": [{"name": n, "kind": pool.kind(n)} for n in pool.names],
            "defaults": {"temperature": Sampling.temperature, "top_p": Sampling.top_p, "seed": Sampling.seed, "max_new_tokens": Sampling.max_new_tokens},
            "judge": judge.describe(),
        }

    @app.post("/api/sample")
    def sample(req: SampleRequest) -> dict:
        if req.model not in pool.names:
            raise HTTPException(404, f"model {req.model}: not in this run; it has {', '.join(pool.names)}")
        if req.instruct and not req.text.strip():
            raise HTTPException(400, "an instruction is empty; e.g. Words: dog, ball, happy")
        settings = Sampling(temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_new_tokens, seed=req.seed)
        try:
            return pool.sample(req.model, Prompt(req.text.strip() if req.instruct else req.text, instruct=req.instruct), settings)
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/api/grade")
    def grade(req: GradeRequest) -> dict:
        try:
            return judge.grade(req.task, req.prompt, req.text)
        except UserError as exc:
            raise HTTPException(502, str(exc)) from None

    return app


def run_server(run_dir: Path, cfg, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> int:
    import uvicorn

    app = create_app(run_dir, cfg, device)
    check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach port {port} can use these models and the judge (there is no login)")
    print(f"serving the models of {run_dir} at http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def check_port_free(host: str, port: int) -> None:
    """A taken port as one line naming the fix (uvicorn would log it and exit with status 1)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); pick another port with --port {port + 1}") from None
