"""Every prompt format the toolkit writes or reads, each with its version.

A version is part of every cache key and fingerprint that depends on the format, so editing a
template here invalidates exactly the answers and checkpoints it changes.
Sections: the instruction-tuning format (SFT and completion), then the story, summary and
judge templates.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources

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


# --- the story prompt (phase 1, generate) and the summary prompt (phase 3, instruct-data) ----
# Both templates live in resources/prompts/*.txt (package data); the story features are defined
# in story.txt. A version is the file's declared one plus a hash of its text, so an edit that
# forgets to bump the version still invalidates cached answers.


def _prompt_file(name: str) -> str:
    return resources.files("tinystories").joinpath(f"resources/prompts/{name}").read_text(encoding="utf-8")


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@lru_cache(maxsize=1)
def story_template() -> dict:
    """The versioned story prompt: {version, features: {name: sentence}, features_sentence, text}."""
    raw = _prompt_file("story.txt")
    out: dict = {"features": {}}
    lines = raw.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("#") or not line.strip():
            continue
        if line.strip() == "template:":
            out["text"] = "\n".join(lines[n + 1 :]).strip()
            break
        key, _, value = line.partition(":")
        if key.startswith("feature "):
            out["features"][key.split(None, 1)[1].strip()] = value.strip()
        else:
            out[key.strip()] = value.strip()
    out["version"] = f"{out['version']}+{_text_hash(raw)}"
    return out


def story_prompt(words: dict, features: list[str]) -> str:
    """The paper's story request for one noun, verb and adjective and a list of feature names."""
    t = story_template()
    sentence = t["features_sentence"].format(features=", ".join(t["features"][f] for f in features)) if features else ""
    text = t["text"].format(noun=words["noun"], verb=words["verb"], adjective=words["adjective"], features_sentence=sentence)
    return re.sub(r" {2,}", " ", text)  # no features: the sentence and its space vanish


@lru_cache(maxsize=1)
def summary_template() -> tuple[str, str]:
    """(template text, template version) of the summary request; `{story}` marks the story."""
    version = ""
    body: list[str] = []
    for line in _prompt_file("summary.txt").splitlines():
        if line.startswith("#") and not body:
            m = re.match(r"#\s*version:\s*(\S+)", line)
            if m:
                version = m.group(1)
            continue
        body.append(line)
    text = "\n".join(body).strip() + "\n"
    return text, f"{version or 'summary'}-{_text_hash(text)}"


def summary_prompt(story: str) -> str:
    """The request for a one-to-two-sentence summary of one story."""
    return summary_template()[0].replace("{story}", story.strip())


# --- the judge's grading prompt (phase 5) ----------------------------------------------------
# The paper's method (its Figure 3): the story's beginning, then `***`, then the student's
# completion; the judge assesses the part after `***`, grades it out of 10 for grammar,
# creativity, consistency and plot, and guesses the writer's age group.

JUDGE_TEMPLATE_VERSION = "judge-grading-2"  # 2: the continuation prompt follows Figure 3 and grades plot
JUDGE_REPLY_START = "Assessment:"  # completion-mode prompts end with it, so the reply continues it

JUDGE_SYSTEM = "You are an experienced teacher who grades short stories written by young students. You are fair, specific and brief."

# The reply's lines, shared by both templates: what the sampled reply is parsed for and what
# expected scoring forces line by line (JUDGE_LINE_LABELS).
JUDGE_REPLY_FORMAT = """Reply in exactly this format:
Assessment: <your assessment>
Grammar: <1-10>/10
Creativity: <1-10>/10
Consistency: <1-10>/10
Plot: <1-10>/10
Age group: <one letter A-F>"""

# Figure 3 point by point: the exercise, the *** separator, the assessment of the part after ***
# (grammar, consistency, the sentence split by ***), the four grades, the age groups. The
# format block is ours: it makes the reply parseable and gives the lines expected scoring forces.
JUDGE_CONTINUE_TEMPLATE = """In the following exercise, the student is given a beginning of a story. The student needs to complete it into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks the separator between the prescribed beginning and the student's completion:

{beginning} ***{completion}

Please provide your general assessment about the part written by the student (the one after the *** symbol). Is it grammatically correct? Is it consistent with the beginning of the story? Pay special attention to whether the student manages to complete the sentence which is split in the middle by the separator ***.

Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and whether the plot makes sense, each with a whole number from 1 (very poor) to 10 (excellent). Moreover, please provide your best guess of what the age of the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.

""" + JUDGE_REPLY_FORMAT

JUDGE_INSTRUCT_TEMPLATE = """Here is a writing exercise. The student received the instructions below and had to write a short story that follows them. The instructions come first; the three stars *** mark where the student's story starts. Words: listed words must appear in the story; Features: the story must have these features; Summary: the story must tell this plot; Sentence: the story must contain this sentence.

{beginning}
***{completion}

First write a short assessment of the student's story. Is it grammatically correct? Does it follow every instruction? Is it creative? Does the plot make sense, with a beginning, a middle and an end?

Then grade the story with a whole number from 1 (very poor) to 10 (excellent) for each of grammar, creativity, consistency with the instructions and plot, and guess the student's age group from the writing: A (3 or under), B (4-5), C (6-7), D (8-9), E (10-12) or F (13-16).

""" + JUDGE_REPLY_FORMAT


def judge_prompt(task: str, beginning: str, completion: str) -> str:
    """The grading request for one completion: a story beginning (task "continue") or an instruction."""
    template = JUDGE_INSTRUCT_TEMPLATE if task == "instruct" else JUDGE_CONTINUE_TEMPLATE
    return template.format(beginning=beginning.rstrip(), completion=completion)


def judge_completion_prompt(user: str) -> str:
    """The same request as one raw text, for a judge used in completion mode (no chat roles)."""
    return f"{JUDGE_SYSTEM}\n\n{user}\n\n{JUDGE_REPLY_START}"


# The reply's lines in the format block's order and spelling: expected scoring writes them itself.
JUDGE_LINE_LABELS = {"grammar": "Grammar", "creativity": "Creativity", "consistency": "Consistency", "plot": "Plot", "age_group": "Age group"}


def judge_forced_reply(assessment: str, filled: list[tuple[str, str]], next_line: str) -> str:
    """The reply as the format block asks for it, from after the `JUDGE_REPLY_START` that ends a
    completion prompt up to where the judge writes `next_line`'s value: the assessment, the lines
    already `filled` ((name, value) pairs), then the next label, e.g. "Plot: "."""
    lines = [f" {assessment.strip()}"]
    lines += [f"{JUDGE_LINE_LABELS[name]}: {value}" + ("" if name == "age_group" else "/10") for name, value in filled]
    return "\n".join(lines + [f"{JUDGE_LINE_LABELS[next_line]}: "])
