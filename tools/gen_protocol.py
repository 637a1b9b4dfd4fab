#!/usr/bin/env python3
"""Generate aiokprod's protocol messages and error table from Kafka's official JSON schemas.

Usage::

    python tools/gen_protocol.py [--schemas DIR] [--out-dir REPO_ROOT]

``--schemas`` defaults to the committed copy ``<repo>/tools/kafka-protocol`` (``message/*.json`` and
``error-codes.tsv``, copied from the project's reference data; see its README). Writes ``aiokprod/protocol/_generated.py`` and ``aiokprod/_error_codes.py`` under
``--out-dir`` (default: the repository). The output is deterministic, so the test suite regenerates
into a temporary directory and compares to check the committed files are fresh.

The generated code is straight-line Python (one ``_encode`` / ``_decode`` per struct with the version
checks written out), not an interpreter of the JSON at run time.
"""
from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCHEMAS = os.path.join(REPO, "tools", "kafka-protocol")

#: The message pairs (and headers) we generate. Every *Request.json still feeds the header tables.
MESSAGES = [
    "ApiVersions", "Metadata", "Produce", "InitProducerId", "FindCoordinator", "AddPartitionsToTxn",
    "AddOffsetsToTxn", "EndTxn", "TxnOffsetCommit", "SaslHandshake", "SaslAuthenticate",
    "CreateTopics", "ListOffsets", "Fetch", "DescribeProducers",
]
HEADERS = ["RequestHeader", "ResponseHeader"]

FIXED = {  # type -> (struct suffix, width)
    "int8": ("i8", 1), "int16": ("i16", 2), "uint16": ("u16", 2), "int32": ("i32", 4),
    "uint32": ("u32", 4), "int64": ("i64", 8), "float64": ("f64", 8),
}
PRIMITIVES = set(FIXED) | {"bool", "uuid", "string", "bytes", "records"}


def load_json(path: str) -> dict:
    # The schema files carry `//` comment lines (and trailing comments after fields); strip them.
    lines = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped.startswith("//"):
                continue
            # A `//` outside a string at the end of a line: cut it. Schema strings never hold `//`
            # except in URLs inside "about" texts, so only cut when the quotes before it are balanced.
            idx = line.find("//")
            if idx >= 0 and line[:idx].count('"') % 2 == 0:
                line = line[:idx] + "\n"
            lines.append(line)
    return json.loads("".join(lines))


def parse_versions(text, hi_max: int):
    """'3+' -> (3, hi_max); '0-5' -> (0, 5); '7' -> (7, 7); 'none' -> None."""
    if text is None:
        return None
    text = str(text).strip()
    if text == "none":
        return None
    if text.endswith("+"):
        return int(text[:-1]), hi_max
    if "-" in text:
        lo, hi = text.split("-")
        return int(lo), int(hi)
    return int(text), int(text)


def intersect(a, b):
    if a is None or b is None:
        return None
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def snake(name: str) -> str:
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    if keyword.iskeyword(s):
        s += "_"
    return s


class Field:
    def __init__(self, raw: dict, msg_hi: int, msg_flex):
        self.raw = raw
        self.name = raw["name"]
        self.attr = snake(self.name)
        t = raw["type"]
        self.is_array = t.startswith("[]")
        self.elem = t[2:] if self.is_array else t
        self.is_struct = self.elem not in PRIMITIVES
        self.versions = parse_versions(raw["versions"], msg_hi)
        self.nullable = parse_versions(raw.get("nullableVersions"), msg_hi)
        self.tag = raw.get("tag")
        self.tagged = parse_versions(raw.get("taggedVersions"), msg_hi) if self.tag is not None else None
        if self.tag is not None:
            self.versions = intersect(self.versions, self.tagged)
        # A field-level flexibleVersions (RequestHeader.ClientId: "none") overrides the message's.
        self.flex = parse_versions(raw["flexibleVersions"], msg_hi) if "flexibleVersions" in raw else msg_flex
        self.fields_raw = raw.get("fields")
        self.default = raw.get("default")
        if self.is_struct and not self.is_array and self.nullable:
            raise NotImplementedError(f"nullable struct field {self.name}")


class StructDef:
    def __init__(self, name: str, fields_raw: list, msg_hi: int, msg_flex):
        self.name = name
        self.fields = [Field(f, msg_hi, msg_flex) for f in fields_raw]


class Gen:
    """Emits the code of one message schema (its nested and common structs included)."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.msg_name = schema["name"]
        self.valid = parse_versions(schema["validVersions"], None)
        hi = self.valid[1]
        self.valid = (self.valid[0], hi)
        self.flex = parse_versions(schema.get("flexibleVersions", "none"), hi)
        self.structs: dict[str, StructDef] = {}
        self.order: list[str] = []  # children before parents
        commons = {c["name"]: c for c in schema.get("commonStructs", [])}
        self._commons = commons
        top = StructDef(self.msg_name, schema["fields"], hi, self.flex)
        self._collect(top)
        self.top = top

    def _collect(self, sd: StructDef):
        for f in sd.fields:
            if not f.is_struct:
                continue
            raw_fields = f.fields_raw
            if raw_fields is None:
                if f.elem not in self._commons:
                    raise ValueError(f"{self.msg_name}: unknown type {f.elem}")
                raw_fields = self._commons[f.elem]["fields"]
            if f.elem in self.structs:
                if f.fields_raw is not None and self.structs[f.elem].raw_fields != raw_fields:
                    raise ValueError(f"{self.msg_name}: struct {f.elem} defined twice differently")
                continue
            child = StructDef(f.elem, raw_fields, self.valid[1], self.flex)
            child.raw_fields = raw_fields
            self.structs[f.elem] = child
            self._collect(child)
            self.order.append(f.elem)

    # -- helpers -------------------------------------------------------------------------------------

    def modname(self, struct_name: str) -> str:
        return f"_{self.msg_name}_{struct_name}"

    def cond(self, rng, within):
        """Python condition for `version in rng`, knowing version is already in `within`."""
        if rng is None:
            return "False"
        lo, hi = rng
        parts = []
        if lo > within[0]:
            parts.append(f"version >= {lo}")
        if hi < within[1]:
            parts.append(f"version <= {hi}")
        if not parts:
            return None
        if len(parts) == 2:
            return f"{lo} <= version <= {hi}"
        return parts[0]

    def default_expr(self, f: Field) -> str:
        if f.is_array:
            return "[]"
        if f.is_struct:
            return f"{self.modname(f.elem)}()"
        d = f.default
        t = f.elem
        if t in FIXED:
            if d is None or d == "":
                return "0"
            if t == "float64":
                return repr(float(d))
            return str(int(str(d), 0))
        if t == "bool":
            if d is None:
                return "False"
            return "True" if str(d).lower() == "true" else "False"
        if t == "uuid":
            return "ZERO_UUID"
        if t == "string":
            if d == "null" or (d is None and f.nullable):
                return "None"
            return repr(d or "")
        if t in ("bytes", "records"):
            return "None" if f.nullable else "b''"
        raise ValueError(t)

    # -- encode --------------------------------------------------------------------------------------

    def flex_mode(self, f: Field, within):
        """'classic', 'compact' or 'both' for the field's encodings within the version range."""
        if f.flex is None:
            return "classic"
        if f.tag is not None:
            return "compact"
        rng = intersect(f.versions, within)
        if rng is None:
            return "classic"
        if f.flex[0] <= rng[0]:
            return "compact"
        if f.flex[0] > rng[1]:
            return "classic"
        return "both"

    def emit_branch(self, lines, ind, mode, classic, compact):
        """Emit lines choosing classic vs compact encoding (each a list of code lines)."""
        p = "    " * ind
        if mode == "classic":
            lines += [p + c for c in classic]
        elif mode == "compact":
            lines += [p + c for c in compact]
        else:
            lines.append(p + "if flex:")
            lines += [p + "    " + c for c in compact]
            lines.append(p + "else:")
            lines += [p + "    " + c for c in classic]

    def enc_value(self, lines, ind, f: Field, elem_only: bool, v: str, out: str, mode: str, depth=0):
        p = "    " * ind
        t = f.elem
        if f.is_array and not elem_only:
            self.emit_branch(lines, ind, mode, [f"write_array_len({out}, {v})"],
                             [f"write_compact_array_len({out}, {v})"])
            item = f"i{depth}"
            if f.nullable:
                lines.append(p + f"if {v} is not None:")
                ind += 1
                p = "    " * ind
            lines.append(p + f"for {item} in {v}:")
            self.enc_value(lines, ind + 1, f, True, item, out, mode, depth + 1)
            return
        if f.is_struct:
            lines.append(p + f"{v}._encode({out}, version)")
        elif t in FIXED:
            lines.append(p + f"{out} += pack_{FIXED[t][0]}({v})")
        elif t == "bool":
            lines.append(p + f"{out} += b'\\x01' if {v} else b'\\x00'")
        elif t == "uuid":
            lines.append(p + f"{out} += {v}.bytes")
        elif t == "string":
            self.emit_branch(lines, ind, mode, [f"write_string({out}, {v})"],
                             [f"write_compact_string({out}, {v})"])
        elif t in ("bytes", "records"):
            self.emit_branch(lines, ind, mode, [f"write_bytes({out}, {v})"],
                             [f"write_compact_bytes({out}, {v})"])
        else:
            raise ValueError(t)

    def null_guard(self, lines, ind, f: Field, v: str, within):
        """Reject None where the version does not allow null (strings, bytes, arrays)."""
        if f.elem in FIXED or f.elem in ("bool", "uuid") or (f.is_struct and not f.is_array):
            return
        p = "    " * ind
        rng = intersect(f.versions, within)
        if f.nullable is None or intersect(f.nullable, rng) is None:
            lines.append(p + f"if {v} is None:")
        else:
            c = self.cond(f.nullable, rng)
            if c is None:
                return
            lines.append(p + f"if {v} is None and not ({c}):")
        lines.append(p + f"    raise ValueError('{self.msg_name}: {f.attr} is not nullable in version %d' % version)")

    def gen_encode(self, sd: StructDef, within, lines):
        lines.append("    def _encode(self, out: bytearray, version: int) -> None:")
        # One scratch variable serves fields of every type (straight-line code, no per-field names).
        body = ["        v: Any"]
        uses_flex = any(self.flex_mode(f, within) == "both" for f in sd.fields if f.tag is None)
        if uses_flex:
            body.append(f"        flex = version >= {self.flex[0]}")
        for f in sd.fields:
            if f.tag is not None:
                continue
            rng = intersect(f.versions, within)
            if rng is None:
                continue
            c = self.cond(rng, within)
            ind = self.open_guard(body, c)
            body.append("    " * ind + f"v = self.{f.attr}")
            self.null_guard(body, ind, f, "v", within)
            self.enc_value(body, ind, f, False, "v", "out", self.flex_mode(f, within))
        # The tagged-field section closes every struct in flexible versions.
        if self.flex is not None and intersect(self.flex, within) is not None:
            tagged = self.tagged_fields(sd, within)
            ind = self.open_guard(body, self.cond(self.flex, within))
            p = "    " * ind
            if not tagged:
                body.append(p + "out.append(0)")
            else:
                body.append(p + "tagged = []")
                for f in tagged:
                    c = self.cond(f.versions, within)
                    test = f"self.{f.attr} != {self.default_expr(f)}"
                    if c is not None:
                        test = f"{c} and {test}"
                    body.append(p + f"if {test}:")
                    body.append(p + "    t = bytearray()")
                    self.enc_value(body, ind + 1, f, False, f"self.{f.attr}", "t", "compact")
                    body.append(p + f"    tagged.append(({f.tag}, t))")
                body.append(p + "write_tagged_fields(out, tagged)")
        if not body:
            body.append("        pass")
        lines += body

    @staticmethod
    def open_guard(body: list, condition) -> int:
        """Open ``if condition:`` in a method body (when there is one); return the indent level inside."""
        if condition is None:
            return 2
        body.append(f"        if {condition}:")
        return 3

    @staticmethod
    def tagged_fields(sd, within) -> list:
        """The struct's tagged fields that exist in ``within``, in tag order (the order they are written)."""
        return sorted((f for f in sd.fields if f.tag is not None and intersect(f.versions, within)),
                      key=lambda f: f.tag)

    # -- decode --------------------------------------------------------------------------------------

    def dec_value(self, lines, ind, f: Field, elem_only: bool, target: str, mode: str, within, depth=0):
        """Emit code that reads one value of field `f` into local `target`, advancing `pos`."""
        p = "    " * ind
        t = f.elem
        if f.is_array and not elem_only:
            n = f"n{depth}"
            self.emit_branch(lines, ind, mode, [f"{n}, pos = read_array_len(buf, pos)"],
                             [f"{n}, pos = read_compact_array_len(buf, pos)"])
            lines.append(p + f"if {n} < 0:")
            self.null_check_dec(lines, ind + 1, f, within, always_null=True)
            lines.append(p + f"    {target} = None")
            lines.append(p + "else:")
            lines.append(p + f"    {target} = []")
            lines.append(p + f"    append{depth} = {target}.append")
            lines.append(p + f"    for _ in range({n}):")
            item = f"e{depth}"
            self.dec_value(lines, ind + 2, f, True, item, mode, within, depth + 1)
            lines.append(p + f"        append{depth}({item})")
            return
        if f.is_struct:
            lines.append(p + f"{target}, pos = {self.modname(t)}._decode(buf, pos, version)")
        elif t in FIXED:
            suffix, width = FIXED[t]
            lines.append(p + f"({target},) = unpack_{suffix}(buf, pos)")
            lines.append(p + f"pos += {width}")
        elif t == "bool":
            lines.append(p + f"{target}, pos = read_bool(buf, pos)")
        elif t == "uuid":
            lines.append(p + f"{target}, pos = read_uuid(buf, pos)")
        elif t in ("string", "bytes", "records"):
            kind = "string" if t == "string" else "bytes"
            self.emit_branch(lines, ind, mode, [f"{target}, pos = read_{kind}(buf, pos)"],
                             [f"{target}, pos = read_compact_{kind}(buf, pos)"])
            lines.append(p + f"if {target} is None:")
            if not self.null_check_dec(lines, ind + 1, f, within):
                lines.pop()
        else:
            raise ValueError(t)

    def null_check_dec(self, lines, ind, f: Field, within, always_null=False):
        """Inside an `if value is None` block: reject null where the version forbids it.
        Returns False (and emits nothing) when null is allowed in every version in range."""
        p = "    " * ind
        rng = intersect(f.versions, within)
        msg = f"'{self.msg_name}: null {f.attr} (not nullable in this version)'"
        if f.nullable is None or intersect(f.nullable, rng) is None:
            lines.append(p + f"corrupt({msg})")
            return True
        c = self.cond(f.nullable, rng)
        if c is None:
            if always_null:
                return False
            return False
        lines.append(p + f"if not ({c}):")
        lines.append(p + f"    corrupt({msg})")
        return True

    def gen_decode(self, sd: StructDef, within, lines):
        lines.append("    @classmethod")
        lines.append("    def _decode(cls, buf: memoryview, pos: int, version: int) -> tuple[Self, int]:")
        body = ["        v: Any", "        self = _new(cls)"]
        uses_flex = any(self.flex_mode(f, within) == "both" for f in sd.fields if f.tag is None)
        if uses_flex:
            body.append(f"        flex = version >= {self.flex[0]}")
        for f in sd.fields:
            rng = intersect(f.versions, within)
            if f.tag is not None or rng is None:
                body.append(f"        self.{f.attr} = {self.default_expr(f)}")
                continue
            c = self.cond(rng, within)
            ind = self.open_guard(body, c)
            self.dec_value(body, ind, f, False, "v", self.flex_mode(f, within), within)
            body.append("    " * ind + f"self.{f.attr} = v")
            if c is not None:
                body.append("        else:")
                body.append(f"            self.{f.attr} = {self.default_expr(f)}")
        if self.flex is not None and intersect(self.flex, within) is not None:
            tagged = self.tagged_fields(sd, within)
            ind = self.open_guard(body, self.cond(self.flex, within))
            p = "    " * ind
            body.append(p + "nt, pos = read_tag_count(buf, pos)")
            body.append(p + "for _ in range(nt):")
            body.append(p + "    tag, pos, end = read_tag_header(buf, pos)")
            first = True
            for f in tagged:
                c = self.cond(f.versions, within)
                test = f"tag == {f.tag}" + (f" and {c}" if c else "")
                body.append(p + f"    {'if' if first else 'elif'} {test}:")
                first = False
                self.dec_value(body, ind + 2, f, False, "v", "compact", within)
                body.append(p + f"        self.{f.attr} = v")
            body.append(p + "    pos = end  # unknown tags are skipped")
        body.append("        return self, pos")
        # Array elements of different struct types may share a depth's name (e0, e1...): type them loosely.
        depths = sorted({d for d in range(8) for line in body if f"e{d}, pos = " in line})
        body[1:1] = [f"        e{d}: Any" for d in depths]
        lines += body

    # -- class ---------------------------------------------------------------------------------------

    def py_type(self, f: Field) -> str:
        """The Python type of a field's value, for the class annotations and ``__init__``."""
        t = f.elem
        if f.is_struct:
            elem = self.modname(t)
        elif t in FIXED:
            elem = "float" if t == "float64" else "int"
        elif t == "bool":
            elem = "bool"
        elif t == "uuid":
            elem = "UUID"
        elif t == "string":
            elem = "str"
        else:  # bytes, records: decoded as bytes, encoded from any buffer
            elem = "BytesLike"
        optional = f.nullable is not None or (not f.is_array and not f.is_struct and self.default_expr(f) == "None")
        typ = f"Sequence[{elem}]" if f.is_array else elem
        return f"{typ} | None" if optional else typ

    def gen_annotations(self, sd: StructDef, lines):
        for f in sd.fields:
            lines.append(f"    {f.attr}: {self.py_type(f)}")

    def gen_init(self, sd: StructDef, lines):
        if not sd.fields:
            lines.append("    def __init__(self) -> None:")
            lines.append("        pass")
            return
        params = []
        assigns = []
        for f in sd.fields:
            typ = self.py_type(f)
            if f.is_array:
                params.append(f"{f.attr}: {typ} = EMPTY")
                assigns.append(f"        self.{f.attr} = [] if {f.attr} is EMPTY else {f.attr}")
            elif f.is_struct:
                params.append(f"{f.attr}: {typ} | None = None")
                assigns.append(f"        self.{f.attr} = {self.modname(f.elem)}() if {f.attr} is None "
                               f"else {f.attr}")
            else:
                params.append(f"{f.attr}: {typ} = {self.default_expr(f)}")
                assigns.append(f"        self.{f.attr} = {f.attr}")
        lines.append("    def __init__(self, *, " + ", ".join(params) + ") -> None:")
        lines += assigns

    def field_meta(self, f: Field) -> str:
        return (f"({f.attr!r}, {f.raw['type']!r}, {f.versions!r}, {f.nullable!r}, {f.tag!r}, "
                f"{f.elem if f.is_struct else None!r})")

    def gen_struct(self, sd: StructDef, top: bool, lines):
        within = self.valid
        if top:
            lines.append(f"class {sd.name}(Message):")
        else:
            lines.append(f"class {self.modname(sd.name)}(Struct):")
        about = self.schema.get("about") if top else None
        doc = f"{sd.name}" + (f" (api key {self.schema.get('apiKey')})" if top and "apiKey" in self.schema else "")
        lines.append(f'    """{doc}: generated from {self.msg_name}.json; do not edit."""')
        lines.append("")
        lines.append(f"    __slots__ = ({''.join(repr(f.attr) + ', ' for f in sd.fields)})")
        if not top:
            lines.append(f"    __qualname__ = {self.msg_name + '.' + sd.name!r}")
        else:
            lines.append(f"    API_KEY = {self.schema.get('apiKey')!r}")
            lines.append(f"    VALID_VERSIONS = {self.valid!r}")
            lines.append(f"    FLEXIBLE_VERSIONS = {self.flex[0] if self.flex else None!r}")
            for name in self.order:
                lines.append(f"    {name} = {self.modname(name)}")
        lines.append("    # (attr, schema type, versions, nullable versions, tag, struct name)")
        lines.append("    _FIELDS = (")
        for f in sd.fields:
            lines.append(f"        {self.field_meta(f)},")
        lines.append("    )")
        self.gen_annotations(sd, lines)
        lines.append("")
        self.gen_init(sd, lines)
        lines.append("")
        self.gen_encode(sd, within, lines)
        lines.append("")
        self.gen_decode(sd, within, lines)
        lines.append("")
        lines.append("")

    def generate(self) -> list[str]:
        lines = [f"# ---- {self.msg_name} " + "-" * (94 - len(self.msg_name)), ""]
        for name in self.order:
            self.gen_struct(self.structs[name], False, lines)
        self.gen_struct(self.top, True, lines)
        return lines


HEADER = '''\
"""Kafka protocol messages, generated by tools/gen_protocol.py from the official JSON schemas.

DO NOT EDIT: regenerate with ``python tools/gen_protocol.py``. A test checks this file is fresh.

Each message is one class (``MetadataRequest``...) with ``API_KEY``, ``VALID_VERSIONS``,
``FLEXIBLE_VERSIONS``, ``encode(version)`` and ``decode(data, version)`` (see ``primitives.Message``).
Every struct of a message, however deeply nested in the schema, is an attribute of the message class:
``MetadataResponse.MetadataResponsePartition``. ``_FIELDS`` lists each class's fields.
"""
# fmt: off
# flake8: noqa
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self
from uuid import UUID

from aiokprod.protocol.primitives import (
    EMPTY, BytesLike, ZERO_UUID, Message, Struct, corrupt, pack_f64, pack_i8, pack_i16, pack_i32, pack_i64,
    pack_u16, pack_u32, read_array_len, read_bool, read_bytes, read_compact_array_len,
    read_compact_bytes, read_compact_string, read_string, read_tag_count, read_tag_header, read_uuid,
    unpack_f64, unpack_i8, unpack_i16, unpack_i32, unpack_i64, unpack_u16, unpack_u32,
    write_array_len, write_bytes, write_compact_array_len, write_compact_bytes,
    write_compact_string, write_string, write_tagged_fields,
)

_new = object.__new__  # decode fills a bare instance: no __init__ defaults computed only to be overwritten

'''


def generate_protocol(schemas_dir: str) -> str:
    msg_dir = os.path.join(schemas_dir, "message")
    out = [HEADER]
    names = list(HEADERS)
    for m in MESSAGES:
        names += [m + "Request", m + "Response"]
    for name in names:
        schema = load_json(os.path.join(msg_dir, name + ".json"))
        out.append("\n".join(Gen(schema).generate()))
    # Header tables for every API in the schema directory (not only the generated ones), so the
    # framing layer knows header versions of any request it might be handed.
    flex_table = {}
    api_names = {}
    for fn in sorted(os.listdir(msg_dir)):
        if not fn.endswith("Request.json"):
            continue
        schema = load_json(os.path.join(msg_dir, fn))
        if "apiKey" not in schema:
            continue
        valid = parse_versions(schema["validVersions"], None)
        flex = parse_versions(schema.get("flexibleVersions", "none"), valid[1])
        flex_table[schema["apiKey"]] = flex[0] if flex else None
        api_names[schema["apiKey"]] = schema["name"][: -len("Request")]
    out.append("#: api key -> first flexible request version (None: never flexible), for every API.")
    out.append("FIRST_FLEXIBLE_VERSION = {")
    for k in sorted(flex_table):
        out.append(f"    {k}: {flex_table[k]!r},  # {api_names[k]}")
    out.append("}")
    out.append("")
    out.append("#: api key -> API name, for every API.")
    out.append("API_NAMES = {")
    for k in sorted(api_names):
        out.append(f"    {k}: {api_names[k]!r},")
    out.append("}")
    out.append("")
    out.append("#: api key -> (request class, response class) of the generated messages.")
    out.append("MESSAGES = {")
    for m in MESSAGES:
        out.append(f"    {m}Request.API_KEY: ({m}Request, {m}Response),")
    out.append("}")
    out.append("")
    out.append("__all__ = [")
    for name in names:
        out.append(f"    {name!r},")
    out.append("]")
    return "\n".join(out) + "\n"


# ---- error codes --------------------------------------------------------------------------------------

#: Codes that mean "the client's metadata is stale": the Java client's InvalidMetadataException
#: subclasses (its Sender requests a metadata update when a produce fails with one of them).
METADATA_REFRESH = {
    "UNKNOWN_TOPIC_OR_PARTITION", "LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER",
    "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "KAFKA_STORAGE_ERROR", "UNKNOWN_TOPIC_ID",
    "INCONSISTENT_TOPIC_ID",
}


def generate_error_codes(schemas_dir: str) -> str:
    path = os.path.join(schemas_dir, "error-codes.tsv")
    rows = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        assert header[:5] == ["code", "name", "java_exception", "retriable", "message"], header
        for line in fh:
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (5 - len(parts))
            code, name, _java, retriable, message = parts[:5]
            rows.append((int(code), name, retriable.strip() == "yes", name in METADATA_REFRESH, message))
    rows.sort()
    out = [
        '"""Kafka error codes, generated by tools/gen_protocol.py from kafka-protocol/error-codes.tsv.',
        "",
        "DO NOT EDIT. ``ERROR_CODES[code] = (name, retriable, needs_metadata_refresh, message)``:",
        "``retriable`` is the Java client's (the exception extends RetriableException);",
        "``needs_metadata_refresh`` marks the codes that mean stale metadata (the Java client's",
        "InvalidMetadataException family).",
        '"""',
        "# fmt: off",
        "from __future__ import annotations",
        "",
        "ERROR_CODES: dict[int, tuple[str, bool, bool, str]] = {",
    ]
    for code, name, retriable, refresh, message in rows:
        out.append(f"    {code}: ({name!r}, {retriable!r}, {refresh!r}, {message!r}),")
    out.append("}")
    out.append("")
    return "\n".join(out) + "\n"


def write_all(schemas_dir: str, out_root: str) -> list[str]:
    targets = {
        os.path.join(out_root, "aiokprod", "protocol", "_generated.py"): generate_protocol(schemas_dir),
        os.path.join(out_root, "aiokprod", "_error_codes.py"): generate_error_codes(schemas_dir),
    }
    for path, text in targets.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return list(targets)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=DEFAULT_SCHEMAS)
    ap.add_argument("--out-dir", default=REPO)
    args = ap.parse_args(argv)
    for path in write_all(os.path.abspath(args.schemas), os.path.abspath(args.out_dir)):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
