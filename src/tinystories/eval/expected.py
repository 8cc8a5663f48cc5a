"""Expected scoring (`judge.scoring: expected`): each grade is the judge's expected grade, read from
its next-token distribution where it writes that grade (G-Eval), instead of one sampled number.

Why: a sampled "Grammar: 7" throws away how sure the judge was; two runs of a small judge
disagree by whole points where their distributions barely differ. The expected grade is a
continuous score with far less noise, and a judge that does not mean to write a grade at all
(little probability on 1..10) is caught as a failure instead of being read as a number.

Two readings. By default (`judge.assessment: false`, `direct_request` below) nothing is sampled:
one request per completion reads every grade after the exercise, one question per grade
(Request.continuations, so the exercise is evaluated once). With `judge.assessment: true` the
judge first writes its assessment (sampled, as in the paper's reply), then the reply's format is
forced line by line in completion mode:

    <prompt> Assessment: <its assessment>\nGrammar:␣      -> top-k tokens at the next position
    ... Grammar: 8/10\nCreativity:␣                      -> (the likeliest grade is written in)
    ... Plot: 6/10\nAge group:␣                          -> letters A-F

Each position is one cached request (max_tokens=1, top_logprobs=k): the backends return
log-probabilities of generated tokens only. Where the tokenizer writes "10" as "1" then "0", one
more request reads the position after a forced "1" (grading.needs_split_of_one). The slots of all
completions go out together, one round per slot, so the backend's concurrency is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from tinystories.errors import UserError
from tinystories.eval.grading import CATEGORIES, age_distribution, expected_grade, grade_distribution, likeliest_age_group, needs_split_of_one
from tinystories.text.prompts import JUDGE_SYSTEM, JUDGE_TEMPLATE_VERSION, judge_completion_prompt, judge_direct_prompt, judge_forced_reply, judge_prompt, judge_template

SLOTS = (*CATEGORIES, "age_group")
ASSESSMENT_STOPS = ("\nGrammar", "\n**Grammar")  # the assessment ends where the judge starts its grade lines

NO_LOGPROBS = "judge.scoring: expected reads the judge's token log-probabilities, but {who} returned none{why}; set judge.scoring: sampled, or use a backend or server that returns them"
NEEDS_COMPLETION_MODE = "judge.scoring: expected forces the reply's grade lines, which needs a judge in completion mode; set judge.llm.mode: completion, or judge.scoring: sampled"


def response_meta(resp) -> dict:
    """Who answered a request, with which seed, after how many attempts: kept with each judgment."""
    return {"judge_model": resp.model, "judge_backend": resp.backend, "seed": resp.seed, "attempts": resp.attempts}


def no_logprobs_error(who: str, why: str = "") -> UserError:
    return UserError(NO_LOGPROBS.format(who=who, why=f" ({why})" if why else ""))


def mentions_logprobs(exc: UserError) -> bool:
    """A backend's own "no log-probabilities" error (llm/openai_backend.py), to be re-said naming the judge option."""
    return "log-probabilities" in str(exc)


@dataclass
class Settings:
    max_tokens: int  # the assessment's budget
    temperature: float  # the assessment's sampling temperature
    top_logprobs: int  # tokens read at each grade position
    min_mass: float  # below this probability on valid grades (or letters) a grade is a failure
    template: dict | None = None  # the grading prompts (text/prompts.judge_template); None = the shipped ones


@dataclass
class ForcedJudgment:
    """One completion's way through the slots: asks for the next position, takes its answer."""

    item: dict
    prompt: str  # the completion-mode judge prompt, ending with "Assessment:"
    seed: int
    settings: Settings
    assessment: str | None = None
    meta: dict = field(default_factory=dict)  # judge model, backend, seed and attempts of the assessment
    filled: list[tuple[str, str]] = field(default_factory=list)  # (slot, value written into the forced reply)
    grades: dict = field(default_factory=dict)
    distributions: dict = field(default_factory=dict)
    first: dict | None = None  # the current slot's position, while the position after "1" is asked
    error: str | None = None
    age_error: str | None = None  # why the age group is None (the grades stand)

    @property
    def key(self) -> str:
        return self.item["key"]

    @property
    def finished(self) -> bool:
        return self.error is not None or len(self.filled) == len(SLOTS)

    def next_request(self):
        """The next request this judgment needs, or None when it is finished."""
        from tinystories.llm import Request

        if self.finished:
            return None
        common = dict(seed=self.seed, template_version=JUDGE_TEMPLATE_VERSION)
        if self.assessment is None:
            return Request(key=f"{self.key}|assessment", prompt=self.prompt, max_tokens=self.settings.max_tokens, temperature=self.settings.temperature, stop=ASSESSMENT_STOPS, **common)
        slot = SLOTS[len(self.filled)]
        text = self.prompt + judge_forced_reply(self.assessment, self.filled, slot)
        # Temperature 1: a server that scales log-probabilities by the temperature then returns the
        # model's own distribution; the token it samples is never used.
        position = dict(max_tokens=1, temperature=1.0, top_logprobs=self.settings.top_logprobs, **common)
        if self.first is not None:
            return Request(key=f"{self.key}|{slot}|after-1", prompt=text + "1", **position)
        return Request(key=f"{self.key}|{slot}", prompt=text, **position)

    def take(self, resp) -> None:
        """The answer to the request `next_request` gave: a failure ends the judgment with its reason."""
        if not self.meta:  # the assessment's answer (or its failure) says who judged
            self.meta = response_meta(resp)
        if not resp.ok:
            self.error = resp.error
            return
        if self.assessment is None:
            self.assessment = resp.value
            return
        slot = SLOTS[len(self.filled)]
        if slot == "age_group":
            self._fill_age(resp.value)
        elif self.first is None and needs_split_of_one(resp.value):
            self.first = resp.value  # ask the position after "1" before the grade is known
        else:
            first, after_one = (self.first, resp.value) if self.first is not None else (resp.value, None)
            self.first = None
            self._fill_grade(slot, grade_distribution(first, after_one))

    def _fill_grade(self, slot: str, dist: dict[int, float]) -> None:
        from tinystories.llm import Reject

        self.distributions[slot] = {str(g): round(p, 6) for g, p in dist.items()}
        try:
            self.grades[slot] = expected_grade(dist, self.settings.min_mass, slot)
        except Reject as exc:
            self.error = str(exc)
            return
        likeliest = max(dist, key=lambda g: (dist[g], -g))
        self.filled.append((slot, str(likeliest)))

    def _fill_age(self, position: dict[str, float]) -> None:
        """The age group, or None with `age_error`: unlike a grade, an age group the judge does not
        mean to write as a letter (the embedded 1.5B writes an age in years there, with 98% of its
        probability on digits) leaves the four grades standing: it is no category of the report."""
        from tinystories.llm import Reject

        dist = age_distribution(position)
        self.distributions["age_group"] = {k: round(p, 6) for k, p in dist.items()}
        try:
            letter = likeliest_age_group(dist, self.settings.min_mass)
        except Reject as exc:
            self.grades["age_group"], self.age_error = None, str(exc)
            self.filled.append(("age_group", ""))
            return
        self.grades["age_group"] = letter
        self.filled.append(("age_group", letter))

    def value(self) -> dict:
        """What judge.judgment_record stores: the parsed-reply fields (those read so far, when it
        failed), plus the distributions."""
        out = {**self.grades, "assessment": self.assessment or "", "distributions": self.distributions}
        return {**out, "age_group_error": self.age_error} if self.age_error else out

    def reply_so_far(self) -> str | None:
        """The forced reply up to the line that failed, kept with a failure for inspection."""
        if self.assessment is None:
            return None
        return judge_forced_reply(self.assessment, self.filled, SLOTS[len(self.filled)]) if len(self.filled) < len(SLOTS) else None


def assessment_of(resp) -> str:
    """The assessment text a reply holds; `Reject` when there is none (retried with a fresh seed)."""
    from tinystories.llm import Reject

    text = re.split(r"\n\s*\**\s*grammar\b", resp.text or "", maxsplit=1, flags=re.IGNORECASE)[0].strip()
    if not text:
        raise Reject("empty assessment")
    return text


def position_validator(who: str) -> Callable:
    """The top-k tokens of the one generated position; UserError when the judge returns no log-probabilities."""

    def validate(resp):
        from tinystories.llm import Reject

        if resp.logprobs is None:
            raise no_logprobs_error(who)
        if not resp.logprobs:
            raise Reject("no token generated at the grade position")
        return resp.logprobs[0]

    return validate


def start(item: dict, settings: Settings, seed: int) -> ForcedJudgment:
    src = item["source"]
    template = settings.template or judge_template()
    prompt = judge_completion_prompt(judge_prompt(src["task"], src["prompt"], item["text"], template), template["system"])
    return ForcedJudgment(item=item, prompt=prompt, seed=seed, settings=settings)


def run_rounds(client, judgments: list[ForcedJudgment], who: str, on_finished: Callable[[ForcedJudgment], None]) -> None:
    """Send every judgment's next request together, round after round, until all are finished;
    `on_finished` gets each as soon as it is (so a kill loses only the unfinished ones)."""
    validate_position = position_validator(who)
    active = {j.key: j for j in judgments}
    round_no = 0
    while active:
        for key in [k for k, j in active.items() if j.finished]:
            on_finished(active.pop(key))
        wanted = {}
        for j in active.values():
            request = j.next_request()
            wanted[request.key] = (j, request)
        if not wanted:
            break
        round_no += 1

        assessments = {key for key, (j, _) in wanted.items() if j.assessment is None}

        def validate(resp):
            return assessment_of(resp) if resp.key in assessments else validate_position(resp)

        def on_result(resp) -> None:
            wanted[resp.key][0].take(resp)

        try:
            client.complete([r for _, r in wanted.values()], validate=validate, on_result=on_result, collect=False, total=len(wanted), description=f"judge {round_no}")
        except UserError as exc:
            if mentions_logprobs(exc) and "judge.scoring" not in str(exc):
                raise no_logprobs_error(who, str(exc).splitlines()[0].split(";")[0][:200]) from None
            raise


# -- grades read right after the request (judge.assessment: false, the default) ---------------
# One request per completion: the exercise is evaluated once and each grade's question read on its
# own after it (Request.continuations; text/prompts.judge_direct_prompt), each question as it is
# and again followed by "1" (for a 10 written as "1" then "0"), then the age group's. Each is
# read independently of the others (no grade written in before the next), so one grade cannot
# anchor the next.


DIRECT_POSITIONS = 2 * len(CATEGORIES) + 1  # each grade's line start and the same after "1"; the age group's


def direct_request(item: dict, settings: Settings, seed: int):
    """The one positions request that reads every slot of `item`'s judgment."""
    from tinystories.llm import Request

    src = item["source"]
    template = settings.template or judge_template()
    prompt, starts = judge_direct_prompt(src["task"], src["prompt"], item["text"], template)
    continuations = []
    for slot in SLOTS:
        continuations += [starts[slot]] if slot == "age_group" else [starts[slot], starts[slot] + "1"]
    return Request(key=item["key"], prompt=prompt, max_tokens=1, temperature=1.0, seed=seed, template_version=template["version"],
                   top_logprobs=settings.top_logprobs, continuations=tuple(continuations))  # fmt: skip


def read_direct(positions: list[dict[str, float]], min_mass: float) -> tuple[dict, str | None]:
    """(the judgment's value, its failure or None) from the positions `direct_request` asked for:
    a grade with too little probability on 1..10 fails the judgment (with the distributions read)."""
    from tinystories.llm import Reject

    value: dict = {"assessment": "", "distributions": {}}
    error = None
    at = iter(positions)
    for slot in SLOTS:
        if slot == "age_group":
            dist = age_distribution(next(at))
            value["distributions"][slot] = {k: round(p, 6) for k, p in dist.items()}
            try:
                value[slot] = likeliest_age_group(dist, min_mass)
            except Reject as exc:  # the grades stand without it (see ForcedJudgment._fill_age)
                value[slot], value["age_group_error"] = None, str(exc)
            continue
        first, after_one = next(at), next(at)
        dist = grade_distribution(first, after_one if needs_split_of_one(first) else None)
        value["distributions"][slot] = {str(g): round(p, 6) for g, p in dist.items()}
        try:
            value[slot] = expected_grade(dist, min_mass, slot)
        except Reject as exc:
            error = error or str(exc)
    return value, error


def send_direct(client, items: list[dict], settings: Settings, seeds: dict[str, int], who: str, on_finished: Callable[[dict, dict | None, str | None, dict], None]) -> None:
    """Judge `items` with one positions request each; `on_finished(item, value, error, meta)` gets
    each as it arrives. A grade without enough probability mass is a failure, not retried: the
    same positions give the same distribution whatever the seed."""
    wanted = {item["key"]: item for item in items}

    def validate(resp):
        if resp.logprobs is None:
            raise no_logprobs_error(who)
        if len(resp.logprobs) != DIRECT_POSITIONS:
            raise UserError(f"judge: {who} returned {len(resp.logprobs)} positions for the {DIRECT_POSITIONS} asked; check the judge's llm backend")
        return read_direct(resp.logprobs, settings.min_mass)

    def on_result(resp) -> None:
        item = wanted[resp.key]
        value, error = resp.value if resp.ok else (None, resp.error)
        on_finished(item, value, error, response_meta(resp))

    requests = [direct_request(item, settings, seeds[item["key"]]) for item in items]
    try:
        client.complete(requests, validate=validate, on_result=on_result, collect=False, total=len(requests), description="judge")
    except UserError as exc:
        if mentions_logprobs(exc) and "judge.scoring" not in str(exc):
            raise no_logprobs_error(who, str(exc).splitlines()[0].split(";")[0][:200]) from None
        raise


def resolve_scoring(scoring: str, mode: str, client, seed: int, assessment: bool = False) -> str:
    """"expected" or "sampled" for `judge.scoring` (auto | expected | sampled): auto is expected
    when the judge is in completion mode and answers a one-token probe with log-probabilities, or
    when the grades are read without an assessment from a backend that reads positions itself
    (the embedded one: it reads the raw prompt whatever `llm.mode` says)."""
    from tinystories.llm import Request

    if scoring == "sampled":
        return "sampled"
    if mode != "completion" and not assessment and getattr(client.backend, "reads_positions", False):
        return "expected"
    if mode != "completion":
        if scoring == "expected":
            raise UserError(NEEDS_COMPLETION_MODE)
        return "sampled"
    if scoring == "expected":
        return "expected"  # the first grade position says it if the judge returns no log-probabilities
    probe = Request(key="judge|logprobs-probe", prompt=f"{JUDGE_SYSTEM}\n\nGrammar: ", max_tokens=1, temperature=1.0, top_logprobs=1, seed=seed, template_version=JUDGE_TEMPLATE_VERSION)
    try:
        [resp] = client.complete([probe], validate=lambda r: r.logprobs, description="judge probe")
    except UserError as exc:
        if mentions_logprobs(exc):
            return "sampled"
        raise
    if not resp.ok:
        raise UserError(f"judge.scoring: auto could not ask the judge whether it returns token log-probabilities ({resp.error.splitlines()[0][:160]}); check judge.llm, or set judge.scoring: expected or sampled")
    return "expected" if resp.logprobs else "sampled"
