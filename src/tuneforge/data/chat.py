"""SFT data files → conversations (or plain texts for continued pre-training).

Reads a JSON array (.json, e.g. Alpaca's), JSONL, CSV/TSV or Parquet. The row format is detected per file from
its keys, or forced with data.format:

| format | keys | becomes |
| --- | --- | --- |
| chat | `messages`: [{role, content}] | the messages |
| sharegpt | `conversations`: [{from: human/gpt/system, value}] | user / assistant / system messages |
| prompt_completion | `prompt`, `completion` (strings or message lists) | a string prompt is one user turn, a string completion one assistant turn |
| alpaca | `instruction`, `input`, `output` (+ `system`, `history`) | user = instruction + "\\n" + input (LLaMA-Factory's join; empty parts dropped), assistant = output |
| text | `text` (or data.text_column) | the text itself (loss on every token) |
| template (data.prompt_template set) | any table columns | user = data.prompt_template, assistant = data.completion_template, `{column}` fields filled from the row (the label column mapped through data.label_names) |

`{{name}}` placeholders (no spaces inside, LLaMA-Factory's identity-data convention) are replaced from
data.replace in every message. One left unreplaced is an error: training an assistant to answer "I am {{name}}"
is silent corruption of exactly what identity data teaches. To keep a placeholder literally, map it to itself.

Returns `Examples(inputs=[conversation | text], labels=[reference answer per row], where=[...])`;
a conversation is a list of {"role", "content"} dicts, the reference answer is its last assistant message (None
for a plain text: labels is None only for inputs given without answers, e.g. prompts to predict).

`read_prompts(path)` reads conversations to answer (`tuneforge predict --chat`): each ends with a user turn."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tuneforge.data.examples import Examples
from tuneforge.data.sources import FILE_READERS
from tuneforge.data.tables import _utf8_error, json_lines, read_table
from tuneforge.errors import DataError

Conversation = list[dict[str, str]]
CHAT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
# detection order: the first format whose keys a file has wins
DETECT = (("chat", {"messages"}), ("sharegpt", {"conversations"}), ("prompt_completion", {"prompt", "completion"}),
          ("alpaca", {"instruction", "output"}), ("text", {"text"}))
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}")
FIELD = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")  # {column} in data.prompt_template (not a {{placeholder}})
JSON_KEYS = ("messages", "conversations", "prompt", "completion", "history")  # may hold JSON text in CSV cells


class BadRow(ValueError):
    """A row whose structure is wrong; the message names the key and the fix (the caller adds file + row)."""


# ---------------------------------------------------------------- files → (where, row dict)


def _json_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    if not text.lstrip().startswith("["):
        return _jsonl_rows(path, text)  # a .json file holding one object per line
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg}); the file must be one JSON array of "
                        "objects") from None
    rows = []
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path} row {n}", row))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    return [(f"{path} line {n}", row) for n, row in json_lines(path, text)]


def _table_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # nested lists/structs come back as plain Python lists/dicts

        try:
            records = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read ({str(e).splitlines()[0][:160]})") from None
        return [(f"{path} row {n}", r) for n, r in enumerate(records, 1)]
    df = read_table(path)  # CSV / TSV: every cell a string, with the file line of each row
    lines = df.pop("_line").tolist()
    return [(f"{path} line {n}", r) for n, r in zip(lines, df.to_dict("records"))]


def load_rows(path: Path) -> list[tuple[str, dict]]:
    """Every row of a data file as (where, dict); errors name the file and line/row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in CHAT_SUFFIXES:
        raise DataError(f"data file '{path}': unsupported type '{suffix}'; use {', '.join(CHAT_SUFFIXES)}")
    if suffix in (".json", ".jsonl"):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise _utf8_error(path, e) from None
        rows = _json_rows(path, text) if suffix == ".json" else _jsonl_rows(path, text)
    else:
        rows = _table_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows; the split must not be empty")
    return rows


def detect_format(rows: list[tuple[str, dict]], path: Path, text_key: str = "text") -> str:
    keys = set().union(*(r.keys() for _, r in rows))
    for fmt, need in DETECT:
        if need <= keys or (fmt == "text" and text_key in keys):
            return fmt
    raise DataError(f"{path}: cannot tell the row format from its keys ({', '.join(sorted(map(str, keys)))}); "
                    "expected messages, conversations, prompt+completion, instruction+output or text; "
                    "rename the keys or set data.format")


# ---------------------------------------------------------------- one row → conversation / text


def _string(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # missing, null or an empty Parquet cell
        if required:
            raise BadRow(f"no '{key}'; add it (a string)")
        return ""
    if not isinstance(value, str):
        raise BadRow(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _json_value(row: dict, key: str) -> Any:
    value = row.get(key)
    if isinstance(value, str) and key in JSON_KEYS and value.lstrip().startswith("["):
        try:  # CSV cells hold message lists as JSON text
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRow(f"'{key}' is not valid JSON ({e.msg})") from None
    return value


def _message(m: Any, key: str, i: int) -> dict[str, str]:
    if not isinstance(m, dict):
        raise BadRow(f"'{key}'[{i}] must be an object with role and content, got {type(m).__name__}")
    role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
    if role not in ROLES:
        raise BadRow(f"'{key}'[{i}] has role {role!r}; use one of: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise BadRow(f"'{key}'[{i}] ({role}) needs its text as a string in 'content' (or 'value')")
    return {"role": ROLES[role], "content": content}


def _messages(row: dict, key: str) -> Conversation:
    if key not in row:
        raise BadRow(f"no '{key}' (a list of messages); every row of a file needs the same format")
    value = _json_value(row, key)
    if not isinstance(value, list) or not value:
        raise BadRow(f"'{key}' must be a non-empty list of messages")
    return [_message(m, key, i) for i, m in enumerate(value)]


def _check_turns(conv: Conversation, key: str) -> Conversation:
    roles = [m["role"] for m in conv]
    if "assistant" not in roles:
        raise BadRow(f"'{key}' has no assistant message; nothing to learn")
    if roles[-1] != "assistant":
        raise BadRow(f"'{key}' ends with a {roles[-1]} message; end it with the assistant's answer")
    first = next(r for r in roles if r != "system")
    if first != "user":
        raise BadRow(f"'{key}' starts with an assistant message; start with a user (or system) message")
    return conv


def _from_chat(row: dict, key: str) -> Conversation:
    conv = _messages(row, key)
    system = _string(row, "system", required=False)
    if system and conv[0]["role"] != "system":  # ShareGPT files may keep the system prompt in its own key
        conv = [{"role": "system", "content": system}] + conv
    return _check_turns(conv, key)


def _from_prompt_completion(row: dict) -> Conversation:
    parts = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = _json_value(row, key)
        if isinstance(value, str):
            parts.append([{"role": role, "content": value}])
        elif isinstance(value, list):
            parts.append(_messages(row, key))
        else:
            raise BadRow(f"'{key}' must be a string or a list of messages")
    return _check_turns(parts[0] + parts[1], "completion")


def _history(row: dict) -> Conversation:
    history = _json_value(row, "history") or []
    if not isinstance(history, list):
        raise BadRow("'history' must be a list of [instruction, answer] pairs")
    turns = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BadRow(f"'history'[{i}] must be an [instruction, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _from_alpaca(row: dict) -> Conversation:
    instruction, extra = _string(row, "instruction"), _string(row, "input", required=False)
    output = _string(row, "output")
    if not (instruction.strip() or extra.strip()):
        raise BadRow("'instruction' and 'input' are both empty; give the instruction")
    if not output.strip():
        raise BadRow("'output' is empty; give the answer the model should learn")
    system = _string(row, "system", required=False)
    conv = [{"role": "system", "content": system}] if system else []
    user = "\n".join(part for part in (instruction, extra) if part)
    return conv + _history(row) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _from_text(row: dict, key: str) -> str:
    text = _string(row, key)
    if not text.strip():
        raise BadRow(f"'{key}' is empty; remove the row")
    return text


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if not isinstance(value, str) else value


def _label_name(value: Any, names) -> str:
    key = _cell_text(value).strip()
    if isinstance(names, dict):
        if key not in names:
            raise BadRow(f"label {key!r} has no entry in data.label_names ({', '.join(map(str, names))})")
        return names[key]
    if not key.isdigit() or int(key) >= len(names):
        raise BadRow(f"label {key!r} is not an index into data.label_names (0..{len(names) - 1})")
    return names[int(key)]


def _fill(template: str, row: dict, key: str) -> str:
    def one(m: re.Match) -> str:
        if m.group(1) not in row:
            raise BadRow(f"{key} field {{{m.group(1)}}} is not a column (columns: {', '.join(map(str, row))})")
        return _cell_text(row[m.group(1)])
    return FIELD.sub(one, template)


@dataclass(frozen=True)
class RowTemplates:
    """data.prompt_template / completion_template / label_names: a labelled table row → one instruction turn."""
    prompt: str
    completion: str
    label_column: str
    label_names: Any = None

    def __call__(self, row: dict) -> Conversation:
        values = dict(row)
        if self.label_names is not None and self.label_column in values:
            values[self.label_column] = _label_name(values[self.label_column], self.label_names)
        prompt, answer = (_fill(t, values, k) for t, k in ((self.prompt, "data.prompt_template"),
                                                          (self.completion, "data.completion_template")))
        if not answer.strip():
            raise BadRow("data.completion_template gives an empty answer; fill the column it reads")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def converter(fmt: str, text_key: str = "text") -> Callable[[dict], Conversation | str]:
    return {"chat": lambda r: _from_chat(r, "messages"), "sharegpt": lambda r: _from_chat(r, "conversations"),
            "prompt_completion": _from_prompt_completion, "alpaca": _from_alpaca,
            "text": lambda r: _from_text(r, text_key)}[fmt]


# ---------------------------------------------------------------- placeholders


def replace_placeholders(item: Conversation | str, values: dict[str, str], left: Counter) -> Conversation | str:
    """{{name}} → values[name]; placeholders with no value are counted in `left` (and kept)."""
    def sub(text: str) -> str:
        def one(m: re.Match) -> str:
            if m.group(1) in values:
                return values[m.group(1)]
            left[m.group(1)] += 1
            return m.group(0)
        return PLACEHOLDER.sub(one, text)

    if isinstance(item, str):
        return sub(item)
    return [{"role": m["role"], "content": sub(m["content"])} for m in item]


def _check_placeholders(path: Path, left: Counter, first: Optional[str]) -> None:
    if not left:
        return
    names = ", ".join(f"{{{{{k}}}}} ×{n}" for k, n in left.most_common())
    mapping = ", ".join(f"{k}: ..." for k in left)
    raise DataError(f"{path}: {sum(left.values())} placeholder(s) left unreplaced ({names}; first at {first}); "
                    f"set data.replace: {{{mapping}}} (to keep one literally, map it to itself)")


# ---------------------------------------------------------------- the reader


def read_chat_file(path: Path, fmt: str = "auto", replace: Optional[dict] = None, on_bad_sample: str = "error",
                   text_key: str = "text", log=print, templates: Optional[RowTemplates] = None) -> Examples:
    path = Path(path)
    rows = load_rows(path)
    detected = fmt == "auto" and templates is None
    fmt = "template" if templates is not None else detect_format(rows, path, text_key) if detected else fmt
    convert = templates or converter(fmt, text_key)
    inputs, where, skipped, left, first_left = [], [], [], Counter(), None
    for loc, row in rows:
        try:
            item = convert(row)
        except BadRow as e:
            msg = f"{loc}: {e} (data.format: {fmt})"
            if on_bad_sample != "skip":
                raise DataError(msg + "; fix the row or set data.on_bad_sample: skip") from None
            skipped.append(msg)
            continue
        before = sum(left.values())
        inputs.append(replace_placeholders(item, replace or {}, left))
        first_left = first_left or (loc if sum(left.values()) > before else None)
        where.append(loc)
    _check_placeholders(path, left, first_left)
    if skipped:
        log(f"data: skipped {len(skipped)} bad row(s) in {path} (data.on_bad_sample: skip); first: {skipped[0]}")
    if not inputs:
        raise DataError(f"{path}: no usable rows (all {len(rows)} are bad)")
    log(f"data: {path.name}: {len(inputs)} rows, format {fmt}" + (" (detected)" if detected else ""))
    labels = [None if isinstance(item, str) else item[-1]["content"] for item in inputs]
    return Examples(inputs, labels, where, skipped)


@FILE_READERS.register("chat")
def read_chat(path: Path, dcfg, log=print) -> Examples:
    """FILE_READERS entry for task sft: data.format, data.replace, data.on_bad_sample, data.text_column, and
    data.prompt_template / completion_template / label_names for labelled tables."""
    templates = None if dcfg.prompt_template is None else RowTemplates(
        dcfg.prompt_template, dcfg.completion_template, dcfg.label_column, dcfg.label_names)
    return read_chat_file(path, dcfg.format, dcfg.replace, dcfg.on_bad_sample, dcfg.text_column or "text", log,
                          templates)


read_chat.suffixes = CHAT_SUFFIXES  # the split files read_split looks for (train.jsonl, dev.json, ...)


def read_prompts(path: Path) -> list[Conversation]:
    """Conversations to answer (predict --chat): a JSONL file, each line {"messages": [...]} or a list of messages,
    ending with a user turn."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--chat '{path}' does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: invalid JSON ({e.msg}); each line must be one conversation") from None
        try:
            conv = _messages({"messages": value} if isinstance(value, list) else value, "messages")
        except (BadRow, TypeError) as e:
            msg = e if isinstance(e, BadRow) else "expected an object with \"messages\" or a list of messages"
            raise DataError(f"{path} line {n}: {msg}") from None
        if conv[-1]["role"] != "user":
            raise DataError(f"{path} line {n}: the conversation ends with a {conv[-1]['role']} message; end it with "
                            "the user message to answer")
        out.append(conv)
    if not out:
        raise DataError(f"--chat '{path}' holds no conversation (one JSON line with \"messages\" each)")
    return out
