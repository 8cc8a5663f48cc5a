"""Every prompt format the toolkit writes or reads, each with its version.

A version is part of every cache key and fingerprint that depends on the format, so editing a
template here invalidates exactly the answers and checkpoints it changes.
Sections: the instruction-tuning format (SFT and completion), then the story, summary and
judge templates.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.layout import EOS

# --- instruction tuning (phase 4) and instruct completions (phase 5) ------------------------

SFT_FORMAT_VERSION = "sft-v1"
INSTRUCTION_MARKER = "### Instruction:\n"
RESPONSE_MARKER = "### Response:\n"


def instruction_prompt(instruction: str) -> str:
    """The text an instruct model sees before its story: the paper's instruction format."""
    return f"{INSTRUCTION_MARKER}{instruction}\n\n{RESPONSE_MARKER}"


def sft_example(instruction: str, story: str) -> str:
    """One whole training example as text: prompt, the story (the supervised part), end-of-text."""
    return instruction_prompt(instruction) + story + EOS


def instruction_chat_template() -> str:
    """The instruction format as a Hugging Face chat template (Jinja), so chat messages render
    exactly as `sft_example` / `instruction_prompt`: a user turn is the instruction, an assistant
    turn the story plus end-of-text, and `add_generation_prompt` opens the response. The
    markers go in as JSON strings, which Jinja reads as string literals with the same escapes."""
    instruction, response, eos = (json.dumps(s) for s in (INSTRUCTION_MARKER, "\n\n" + RESPONSE_MARKER, EOS))
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{ " + instruction + " + message['content'] }}"
        "{%- elif message['role'] == 'assistant' -%}{{ " + response + " + message['content'] + " + eos + " }}"
        "{%- else -%}{{ raise_exception('this model was tuned on user and assistant turns only, not ' + message['role']) }}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ " + response + " }}{%- endif -%}"
    )


# --- the story prompt (phase 1, generate) and the summary prompt (phase 3, instruct-data) ----
# Both templates live in resources/prompts/*.txt (package data); the story features are defined
# in story.txt. A user's own file in the same format replaces either (generate.prompt_path,
# instruct_data.summary_prompt_path): it is checked here, when the config loads, so a broken
# prompt fails in one line before any LLM time is spent. A version is the file's declared one
# plus a hash of its text, so an edit that forgets to bump the version still invalidates cached
# answers, and a user's file never shares answers with the shipped prompt.

STORY_WORD_PLACEHOLDERS = ("noun", "verb", "adjective")  # each story prompt must ask for all three words
STORY_PLACEHOLDERS = (*STORY_WORD_PLACEHOLDERS, "features_sentence")
SUMMARY_PLACEHOLDER = "{story}"
_PLACEHOLDER_LIKE = re.compile(r"\{([^{}\s]*)\}")  # what a summary file's author may have meant as a placeholder


def _prompt_file(name: str) -> str:
    return resources.files("tinystories").joinpath(f"resources/prompts/{name}").read_text(encoding="utf-8")


def read_prompt_file(path: str | Path, option: str) -> str:
    """A user's prompt file as text; one UserError line naming the file and the fix otherwise.
    `option` is the config key that named the file, for the way back to the shipped prompt."""
    file = Path(path).expanduser()
    back = f'or set {option} to "" for the shipped prompt'
    if not file.exists():
        raise UserError(f"{path}: prompt file not found (relative paths start from the current directory); fix {option} {back}")
    if file.is_dir():
        raise UserError(f"{path}: is a directory, not a prompt file; name the .txt file inside it in {option}")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not UTF-8 text; save the prompt file as UTF-8 ({option})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check its permissions, {back}") from None


def absolute_prompt_path(path: str) -> str:
    """A prompt path as the config keeps it: absolute, resolved once against the current directory
    when the config loads, so that the run dir's config.yaml finds the same file from anywhere."""
    return str(Path(path).expanduser().resolve()) if isinstance(path, str) and path.strip() else path  # a non-text value: the config check reports it


def prompt_file_inputs(path: str) -> list[str]:
    """A user's prompt file as a stage input: absolute, so that RunDir.path leaves it alone and
    its sha256 goes into the manifest (editing the file reruns the stage instead of skipping it
    as current). [] for the shipped prompt, or for a missing file, which the config check reports."""
    file = Path(path).expanduser().resolve() if path else None
    return [str(file)] if file and file.is_file() else []


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _format_fields(text: str, where: str, what: str) -> set[str]:
    """The {placeholders} of a str.format template; a lone brace is the author's to fix."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise UserError(f"{where}: {what} has a stray brace ({exc}); write {{{{ and }}}} for a literal brace") from None


def _placeholder_list(names) -> str:
    return ", ".join("{" + n + "}" for n in names)


def _check_placeholders(text: str, where: str, what: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> set[str]:
    """The placeholders of `text` (`what`, for the message), all of `required` and none but `allowed`."""
    fields = _format_fields(text, where, what)
    missing = [p for p in required if p not in fields]
    if missing:
        raise UserError(f"{where}: {what} lacks {_placeholder_list(missing)}; it must hold {_placeholder_list(required)}")
    unknown = sorted(fields - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown placeholder(s) {_placeholder_list(unknown)} in {what}; use only {_placeholder_list(allowed)}")
    return fields


def story_template(path: str | Path = "") -> dict:
    """The versioned story prompt: {version, features: {name: sentence}, features_sentence, text}.
    `path`: a user's file in resources/prompts/story.txt's format; empty = the paper's prompt."""
    if path:
        return _parse_story_template(read_prompt_file(path, "generate.prompt_path"), str(path))
    return _parse_story_template(_prompt_file("story.txt"), "resources/prompts/story.txt")


@lru_cache(maxsize=8)
def _parse_story_template(raw: str, where: str) -> dict:
    """The story file's rules: `#` comments and blank lines, then `version:`, `feature <Name>:`
    and `features_sentence:` lines, then a line `template:` after which the prompt runs to the end."""
    out: dict = {"features": {}, "version": "story"}
    lines = raw.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("#") or not line.strip():
            continue
        if line.strip() == "template:":
            out["text"] = "\n".join(lines[n + 1 :]).strip()
            break
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not value:
            raise UserError(f"{where}:{n + 1}: {line.strip()!r} is not `key: value`; before the `template:` line come only # comments, version:, feature <Name>: and features_sentence: lines")
        if key.startswith("feature "):
            out["features"][key.split(None, 1)[1].strip()] = value
        elif key in ("version", "features_sentence"):
            out[key] = value
        else:
            raise UserError(f"{where}:{n + 1}: unknown key {key!r}; use version:, feature <Name>: or features_sentence:, then a line `template:` before the prompt")
    _check_story_template(out, where)
    out["version"] = f"{out['version']}+{_text_hash(raw)}"
    return out


def _check_story_template(t: dict, where: str) -> None:
    if not t.get("text"):
        raise UserError(f"{where}: no prompt; put a line `template:` and the story prompt after it")
    fields = _check_placeholders(t["text"], where, "the template", STORY_WORD_PLACEHOLDERS, STORY_PLACEHOLDERS)
    if not t["features"]:
        return  # a prompt without features: generate.features must then be empty (its check says so)
    if "features_sentence" not in fields:
        raise UserError(f"{where}: defines features but the template lacks {{features_sentence}}; put it where the features are asked for")
    if "features_sentence" not in t:
        raise UserError(f"{where}: defines features but no `features_sentence:` line; add one such as `features_sentence: The story should have the following features: {{features}}.`")
    sentence_fields = _format_fields(t["features_sentence"], where, "features_sentence")
    if sentence_fields != {"features"}:
        raise UserError(f"{where}: features_sentence must hold {{features}} and no other placeholder (it has {_placeholder_list(sorted(sentence_fields)) or 'none'})")


def story_prompt(words: dict, features: list[str], template: dict | None = None) -> str:
    """The story request for one noun, verb and adjective and a list of feature names, in the
    paper's prompt or in `template` (a `story_template(path)`)."""
    t = template or story_template()
    sentence = t["features_sentence"].format(features=", ".join(t["features"][f] for f in features)) if features else ""
    text = t["text"].format(noun=words["noun"], verb=words["verb"], adjective=words["adjective"], features_sentence=sentence)
    return re.sub(r" {2,}", " ", text)  # no features: the sentence and its space vanish


def summary_template(path: str | Path = "") -> tuple[str, str]:
    """(template text, template version) of the summary request; `{story}` marks the story.
    `path`: a user's file in resources/prompts/summary.txt's format; empty = the shipped prompt."""
    if path:
        return _parse_summary_template(read_prompt_file(path, "instruct_data.summary_prompt_path"), str(path))
    return _parse_summary_template(_prompt_file("summary.txt"), "resources/prompts/summary.txt")


@lru_cache(maxsize=8)
def _parse_summary_template(raw: str, where: str) -> tuple[str, str]:
    """The summary file's rules: leading `#` lines are comments (`# version: NAME` names the
    version), the rest is the prompt, with {story} where the story goes."""
    version = ""
    body: list[str] = []
    for line in raw.splitlines():
        if line.startswith("#") and not body:
            m = re.match(r"#\s*version:\s*(\S+)", line)
            if m:
                version = m.group(1)
            continue
        body.append(line)
    text = "\n".join(body).strip() + "\n"
    if SUMMARY_PLACEHOLDER not in text:
        raise UserError(f"{where}: the prompt lacks {SUMMARY_PLACEHOLDER}; put it where the story goes")
    unknown = sorted({m for m in _PLACEHOLDER_LIKE.findall(text) if m != "story"})
    if unknown:
        raise UserError(f"{where}: unknown placeholder(s) {_placeholder_list(unknown)}; the summary prompt takes only {SUMMARY_PLACEHOLDER}")
    return text, f"{version or 'summary'}-{_text_hash(text)}"


def summary_prompt(story: str, template: str | None = None) -> str:
    """The request for a one-to-two-sentence summary of one story (in `template`, the text of
    a `summary_template(path)`, or the shipped prompt)."""
    return (template or summary_template()[0]).replace(SUMMARY_PLACEHOLDER, story.strip())


# --- the judge's grading prompt (phase 5) ----------------------------------------------------
# The paper's method (its Figure 3): the story's beginning, then `***`, then the student's
# completion; the judge assesses the part after `***`, grades it out of 10 for grammar,
# creativity, consistency and plot, and guesses the writer's age group.

JUDGE_TEMPLATE_VERSION = "judge-grading-3"  # 2: the continuation prompt follows Figure 3 and grades plot; 3: one question per grade for reading without an assessment
JUDGE_REPLY_START = "Assessment:"  # completion-mode prompts end with it, so the reply continues it

JUDGE_SYSTEM = "You are an experienced teacher who grades short stories written by young students. You are fair, specific and brief."

# The reply's lines, shared by both templates: what the sampled reply is parsed for and what
# expected scoring forces line by line (JUDGE_LINE_LABELS).
JUDGE_ASSESSMENT_LINE = "Assessment: <your assessment>"
JUDGE_REPLY_FORMAT = """Reply in exactly this format:
""" + JUDGE_ASSESSMENT_LINE + """
Grammar: <1-10>/10
Creativity: <1-10>/10
Consistency: <1-10>/10
Plot: <1-10>/10
Age group: <one letter A-F>"""

# Figure 3 point by point: the exercise, the *** separator, the assessment of the part after ***
# (grammar, consistency, the sentence split by ***), the four grades, the age groups. The
# format block is ours: it makes the reply parseable and gives the lines expected scoring forces.
JUDGE_CONTINUE_EXERCISE = """In the following exercise, the student is given a beginning of a story. The student needs to complete it into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks the separator between the prescribed beginning and the student's completion:

{beginning} ***{completion}"""

JUDGE_CONTINUE_TEMPLATE = JUDGE_CONTINUE_EXERCISE + """

Please provide your general assessment about the part written by the student (the one after the *** symbol). Is it grammatically correct? Is it consistent with the beginning of the story? Pay special attention to whether the student manages to complete the sentence which is split in the middle by the separator ***.

Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and whether the plot makes sense, each with a whole number from 1 (very poor) to 10 (excellent). Moreover, please provide your best guess of what the age of the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.

""" + JUDGE_REPLY_FORMAT

JUDGE_INSTRUCT_EXERCISE = """Here is a writing exercise. The student received the instructions below and had to write a short story that follows them. The instructions come first; the three stars *** mark where the student's story starts. Words: listed words must appear in the story; Features: the story must have these features; Summary: the story must tell this plot; Sentence: the story must contain this sentence.

{beginning}
***{completion}"""

JUDGE_INSTRUCT_TEMPLATE = JUDGE_INSTRUCT_EXERCISE + """

First write a short assessment of the student's story. Is it grammatically correct? Does it follow every instruction? Is it creative? Does the plot make sense, with a beginning, a middle and an end?

Then grade the story with a whole number from 1 (very poor) to 10 (excellent) for each of grammar, creativity, consistency with the instructions and plot, and guess the student's age group from the writing: A (3 or under), B (4-5), C (6-7), D (8-9), E (10-12) or F (13-16).

""" + JUDGE_REPLY_FORMAT


def judge_prompt(task: str, beginning: str, completion: str, template: dict | None = None) -> str:
    """The grading request for one completion: a story beginning (task "continue") or an
    instruction, in the shipped prompts or in `template` (a `judge_template(path)`)."""
    t = template or judge_template()
    return t["instruct" if task == "instruct" else "continue"].format(beginning=beginning.rstrip(), completion=completion)


def judge_completion_prompt(user: str, system: str = JUDGE_SYSTEM) -> str:
    """The same request as one raw text, for a judge used in completion mode (no chat roles)."""
    return f"{system}\n\n{user}\n\n{JUDGE_REPLY_START}"


# A user's grading prompts (judge.template_path), e.g. in another language: one file with the
# system line and both requests, each with the shipped ones' placeholders. The reply-format block
# is not the user's: it is appended to each request, so that every reply parses and expected
# scoring can force its lines whatever the prompt's language.
JUDGE_PLACEHOLDERS = ("beginning", "completion")
JUDGE_TASKS = ("continue", "instruct")


def judge_template(path: str | Path = "") -> dict:
    """{version, system, continue, instruct}: the shipped grading prompts, or a user's file."""
    if not path:
        return {"version": JUDGE_TEMPLATE_VERSION, "system": JUDGE_SYSTEM, "continue": JUDGE_CONTINUE_TEMPLATE, "instruct": JUDGE_INSTRUCT_TEMPLATE,
                "questions": {"continue": (JUDGE_CONTINUE_EXERCISE, JUDGE_QUESTIONS["continue"]), "instruct": (JUDGE_INSTRUCT_EXERCISE, JUDGE_QUESTIONS["instruct"])}}  # fmt: skip
    return _parse_judge_template(read_prompt_file(path, "judge.template_path"), str(path))


@lru_cache(maxsize=8)
def _parse_judge_template(raw: str, where: str) -> dict:
    """The judge file's rules: `#` comments, blank lines, `version:` and `system:` lines, then a
    line `continue:` with the request for a story beginning after it, and a line `instruct:` with
    the request for an instruction; both need {beginning} and {completion}."""
    out: dict = {"version": "judge", "system": JUDGE_SYSTEM}
    bodies: dict[str, list[str]] = {}
    task = None
    for n, line in enumerate(raw.splitlines()):
        if line.strip() in (f"{t}:" for t in JUDGE_TASKS):
            task = line.strip()[:-1]
            if task in bodies:
                raise UserError(f"{where}:{n + 1}: a second `{task}:` line; each request comes once")
            bodies[task] = []
        elif task is not None:
            bodies[task].append(line)
        elif not line.startswith("#") and line.strip():
            key, colon, value = line.partition(":")
            if key.strip() not in ("version", "system") or not value.strip():
                raise UserError(f"{where}:{n + 1}: {line.strip()[:60]!r} is not `version: ...` or `system: ...`; the requests go after lines `continue:` and `instruct:`")
            out[key.strip()] = value.strip()
    for task in JUDGE_TASKS:
        text = "\n".join(bodies.get(task, [])).strip()
        if not text:
            raise UserError(f"{where}: no `{task}:` request; put a line `{task}:` and the grading request for {'an instruction' if task == 'instruct' else 'a story beginning'} after it")
        _check_placeholders(text, where, f"the {task} request", JUDGE_PLACEHOLDERS, JUDGE_PLACEHOLDERS)
        out[task] = f"{text}\n\n{JUDGE_REPLY_FORMAT}"
    out["version"] = f"{out['version']}+{_text_hash(raw)}"
    return out


# The reply's lines in the format block's order and spelling: expected scoring writes them itself.
JUDGE_LINE_LABELS = {"grammar": "Grammar", "creativity": "Creativity", "consistency": "Consistency", "plot": "Plot", "age_group": "Age group"}


# Grades read without an assessment (`judge.assessment: false`, eval/expected.py): one question per
# grade after the exercise, each ending where the judge writes its answer, the way the issue's
# measurement found a small judge discriminating best. Measured with the embedded 1.5B on 12
# held-out stories of its own, original above damaged: grammar 92% on word salad and 100% on
# truncation, consistency 83% on another story's continuation; the Figure 3 request with its
# format lines read one by one instead gave 83%, 83% and 58%.
_GRADE_SCALE = "Answer with a whole number from 1 (very poor) to 10 (excellent)."
_AGE_QUESTION = "What is your best guess of the age of the student, as reflected by the writing? Choose from the age groups A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.\nAge group: "
JUDGE_QUESTIONS = {
    "continue": {
        "grammar": f"Grade the grammar of the student's completion (the part after ***): are its sentences well-formed English, with words in a sensible order, and does it complete the sentence split by ***? {_GRADE_SCALE}\nGrammar: ",
        "creativity": f"Grade the creativity of the student's completion (the part after ***): does it add interesting, original events or ideas? {_GRADE_SCALE}\nCreativity: ",
        "consistency": f"Grade the consistency of the student's completion (the part after ***) with the beginning of the story: does it continue the same characters, places and events that the beginning set up? {_GRADE_SCALE}\nConsistency: ",
        "plot": f"Grade the plot of the whole story: does it make sense, with events in a sensible order and an ending? {_GRADE_SCALE}\nPlot: ",
        "age_group": _AGE_QUESTION,
    },
    "instruct": {
        "grammar": f"Grade the grammar of the student's story (the part after ***): are its sentences well-formed English, with words in a sensible order? {_GRADE_SCALE}\nGrammar: ",
        "creativity": f"Grade the creativity of the student's story (the part after ***): does it add interesting, original events or ideas? {_GRADE_SCALE}\nCreativity: ",
        "consistency": f"Grade how well the student's story (the part after ***) follows the instructions: does it use the listed words, have the features, tell the summary, contain the sentence? {_GRADE_SCALE}\nConsistency: ",
        "plot": f"Grade the plot of the student's story: does it make sense, with events in a sensible order and an ending? {_GRADE_SCALE}\nPlot: ",
        "age_group": _AGE_QUESTION,
    },
}


def judge_direct_prompt(task: str, beginning: str, completion: str, template: dict) -> tuple[str, dict[str, str]]:
    """(the completion-mode prompt, per slot the text after it where the judge writes that grade)
    for grades read without an assessment. The shipped prompts ask one question per grade after
    the exercise (JUDGE_QUESTIONS); a user's file has no such questions, so its request is used
    whole (its format block without the assessment line) and each format line read on its own."""
    kind = "instruct" if task == "instruct" else "continue"
    if template.get("questions"):
        exercise, questions = template["questions"][kind]
        text = exercise.format(beginning=beginning.rstrip(), completion=completion)
        return f"{template['system']}\n\n{text}\n", {slot: "\n" + q for slot, q in questions.items()}
    user = judge_prompt(task, beginning, completion, template).replace(JUDGE_ASSESSMENT_LINE + "\n", "")
    return f"{template['system']}\n\n{user}\n\n", {slot: judge_line_start(slot) for slot in JUDGE_LINE_LABELS}


def judge_line_start(name: str) -> str:
    """Where the judge writes one format line's value, e.g. "Grammar: "."""
    return f"{JUDGE_LINE_LABELS[name]}: "


def judge_forced_reply(assessment: str, filled: list[tuple[str, str]], next_line: str) -> str:
    """The reply as the format block asks for it, from after the `JUDGE_REPLY_START` that ends a
    completion prompt up to where the judge writes `next_line`'s value: the assessment, the lines
    already `filled` ((name, value) pairs), then the next label, e.g. "Plot: "."""
    lines = [f" {assessment.strip()}"]
    lines += [f"{JUDGE_LINE_LABELS[name]}: {value}" + ("" if name == "age_group" else "/10") for name, value in filled]
    return "\n".join(lines + [judge_line_start(next_line)])
