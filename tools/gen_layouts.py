#!/usr/bin/env python3
"""Generate perfd/cpython/layouts_generated.py from CPython's internal headers.

Why: struct offsets of the interpreter's private state change between minor
versions and are not exported anywhere before 3.13. The only trustworthy
source is the compiler, so this script compiles a tiny C program per version
(``Py_BUILD_CORE`` + ``include/python3.X/internal``) that prints ``offsetof``,
``sizeof`` and enum values, and writes them as one Python dict per version.

Run: ``python tools/gen_layouts.py [--pyenv-root DIR]`` (needs gcc and the
pyenv builds with headers installed). Commit the output.
"""

from __future__ import annotations

import argparse
import os
import pprint
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "perfd" / "cpython" / "layouts_generated.py"
VERSIONS = ("3.11", "3.12", "3.13")

# (key, C expression, versions it applies to or None for all)
O = "offsetof"
FIELDS: list[tuple[str, str, tuple[str, ...] | None]] = [
    # runtime / interpreter / thread
    ("runtime.interpreters_head", f"{O}(_PyRuntimeState, interpreters.head)", None),
    # the GIL's holder while it is held: which thread called into C (a probe's view)
    ("runtime.gil_last_holder", f"{O}(_PyRuntimeState, ceval.gil.last_holder)", ("3.11",)),
    ("runtime.gil_last_holder", f"{O}(_PyRuntimeState, _main_interpreter._gil.last_holder)", ("3.12", "3.13")),
    # how many times the GIL changed hands: with the holder, which threads can have run Python
    ("runtime.gil_switch_number", f"{O}(_PyRuntimeState, ceval.gil.switch_number)", ("3.11",)),
    ("runtime.gil_switch_number", f"{O}(_PyRuntimeState, _main_interpreter._gil.switch_number)", ("3.12", "3.13")),
    ("interp.next", f"{O}(PyInterpreterState, next)", None),
    ("interp.threads_head", f"{O}(PyInterpreterState, threads.head)", None),
    ("interp.modules", f"{O}(PyInterpreterState, modules)", ("3.11",)),
    ("interp.modules", f"{O}(PyInterpreterState, imports.modules)", ("3.12", "3.13")),
    ("tstate.size", "sizeof(PyThreadState)", None),
    ("tstate.next", f"{O}(PyThreadState, next)", None),
    ("tstate.interp", f"{O}(PyThreadState, interp)", None),
    ("tstate.cframe", f"{O}(PyThreadState, cframe)", ("3.11", "3.12")),
    ("tstate.current_frame", f"{O}(PyThreadState, current_frame)", ("3.13",)),
    ("tstate.root_cframe", f"{O}(PyThreadState, root_cframe)", ("3.11", "3.12")),
    ("tstate.thread_id", f"{O}(PyThreadState, thread_id)", None),
    ("tstate.native_thread_id", f"{O}(PyThreadState, native_thread_id)", None),
    ("tstate.datastack_chunk", f"{O}(PyThreadState, datastack_chunk)", None),
    ("tstate.datastack_top", f"{O}(PyThreadState, datastack_top)", None),
    ("tstate.datastack_limit", f"{O}(PyThreadState, datastack_limit)", None),
    ("cframe.current_frame", f"{O}(_PyCFrame, current_frame)", ("3.11", "3.12")),
    ("chunk.previous", f"{O}(_PyStackChunk, previous)", None),
    ("chunk.size", f"{O}(_PyStackChunk, size)", None),
    ("chunk.top", f"{O}(_PyStackChunk, top)", None),
    ("chunk.data", f"{O}(_PyStackChunk, data)", None),
    # _PyInterpreterFrame
    ("frame.code", f"{O}(_PyInterpreterFrame, f_code)", ("3.11", "3.12")),
    ("frame.code", f"{O}(_PyInterpreterFrame, f_executable)", ("3.13",)),
    ("frame.previous", f"{O}(_PyInterpreterFrame, previous)", None),
    ("frame.instr", f"{O}(_PyInterpreterFrame, prev_instr)", ("3.11", "3.12")),
    ("frame.instr", f"{O}(_PyInterpreterFrame, instr_ptr)", ("3.13",)),
    ("frame.stacktop", f"{O}(_PyInterpreterFrame, stacktop)", None),
    ("frame.owner", f"{O}(_PyInterpreterFrame, owner)", None),
    ("frame.is_entry", f"{O}(_PyInterpreterFrame, is_entry)", ("3.11",)),
    ("frame.globals", f"{O}(_PyInterpreterFrame, f_globals)", None),
    ("frame.localsplus", f"{O}(_PyInterpreterFrame, localsplus)", None),
    ("frame.owner_thread", "FRAME_OWNED_BY_THREAD", None),
    ("frame.owner_generator", "FRAME_OWNED_BY_GENERATOR", None),
    ("frame.owner_frame_object", "FRAME_OWNED_BY_FRAME_OBJECT", None),
    ("frame.owner_cstack", "FRAME_OWNED_BY_CSTACK", ("3.12", "3.13")),
    # code objects
    ("code.size", "sizeof(PyCodeObject)", None),
    ("code.flags", f"{O}(PyCodeObject, co_flags)", None),
    ("code.argcount", f"{O}(PyCodeObject, co_argcount)", None),
    ("code.firstlineno", f"{O}(PyCodeObject, co_firstlineno)", None),
    ("code.nlocalsplus", f"{O}(PyCodeObject, co_nlocalsplus)", None),
    ("code.localsplusnames", f"{O}(PyCodeObject, co_localsplusnames)", None),
    ("code.localspluskinds", f"{O}(PyCodeObject, co_localspluskinds)", None),
    ("code.filename", f"{O}(PyCodeObject, co_filename)", None),
    ("code.name", f"{O}(PyCodeObject, co_name)", None),
    ("code.qualname", f"{O}(PyCodeObject, co_qualname)", None),
    ("code.linetable", f"{O}(PyCodeObject, co_linetable)", None),
    ("code.firsttraceable", f"{O}(PyCodeObject, _co_firsttraceable)", None),
    ("code.code_adaptive", f"{O}(PyCodeObject, co_code_adaptive)", None),
    ("code.fast_cell", "CO_FAST_CELL", None),
    ("code.fast_free", "CO_FAST_FREE", None),
    # generators / coroutines
    ("gen.iframe", f"{O}(PyGenObject, gi_iframe)", None),
    ("gen.frame_state", f"{O}(PyGenObject, gi_frame_state)", None),
    ("gen.qualname", f"{O}(PyGenObject, gi_qualname)", None),
    ("gen.state_created", "FRAME_CREATED", None),
    ("gen.state_suspended", "FRAME_SUSPENDED", None),
    ("gen.state_suspended_yield_from", "FRAME_SUSPENDED_YIELD_FROM", ("3.13",)),
    ("gen.state_executing", "FRAME_EXECUTING", None),
    ("gen.state_completed", "FRAME_COMPLETED", None),
    ("gen.state_cleared", "FRAME_CLEARED", None),
    # objects and types
    ("object.type", f"{O}(PyObject, ob_type)", None),
    ("var.size", f"{O}(PyVarObject, ob_size)", None),
    ("type.name", f"{O}(PyTypeObject, tp_name)", None),
    ("type.basicsize", f"{O}(PyTypeObject, tp_basicsize)", None),
    ("type.flags", f"{O}(PyTypeObject, tp_flags)", None),
    ("type.dictoffset", f"{O}(PyTypeObject, tp_dictoffset)", None),
    ("type.dict", f"{O}(PyTypeObject, tp_dict)", None),
    ("type.mro", f"{O}(PyTypeObject, tp_mro)", None),
    ("type.cached_keys", f"{O}(PyHeapTypeObject, ht_cached_keys)", None),
    ("type.flag_managed_dict", "Py_TPFLAGS_MANAGED_DICT", None),
    ("type.flag_inline_values", "Py_TPFLAGS_INLINE_VALUES", ("3.13",)),
    ("type.flag_heaptype", "Py_TPFLAGS_HEAPTYPE", None),
    ("str.state", f"{O}(PyASCIIObject, state)", None),
    ("str.length", f"{O}(PyASCIIObject, length)", None),
    ("str.ascii_size", "sizeof(PyASCIIObject)", None),
    ("str.compact_size", "sizeof(PyCompactUnicodeObject)", None),
    ("str.data", f"{O}(PyUnicodeObject, data)", None),
    ("bytes.sval", f"{O}(PyBytesObject, ob_sval)", None),
    ("long.digit", f"{O}(PyLongObject, ob_digit)", ("3.11",)),
    ("long.digit", f"{O}(PyLongObject, long_value.ob_digit)", ("3.12", "3.13")),
    ("long.tag", f"{O}(PyLongObject, long_value.lv_tag)", ("3.12", "3.13")),
    ("long.shift", "PyLong_SHIFT", None),
    ("float.value", f"{O}(PyFloatObject, ob_fval)", None),
    ("tuple.item", f"{O}(PyTupleObject, ob_item)", None),
    ("list.item", f"{O}(PyListObject, ob_item)", None),
    ("dict.used", f"{O}(PyDictObject, ma_used)", None),
    ("dict.keys", f"{O}(PyDictObject, ma_keys)", None),
    ("dict.values", f"{O}(PyDictObject, ma_values)", None),
    ("keys.log2_size", f"{O}(PyDictKeysObject, dk_log2_size)", None),
    ("keys.log2_index_bytes", f"{O}(PyDictKeysObject, dk_log2_index_bytes)", None),
    ("keys.kind", f"{O}(PyDictKeysObject, dk_kind)", None),
    ("keys.nentries", f"{O}(PyDictKeysObject, dk_nentries)", None),
    ("keys.indices", f"{O}(PyDictKeysObject, dk_indices)", None),
    ("keys.kind_general", "DICT_KEYS_GENERAL", None),
    ("keys.entry_size", "sizeof(PyDictKeyEntry)", None),
    ("keys.unicode_entry_size", "sizeof(PyDictUnicodeEntry)", None),
    ("values.values", f"{O}(PyDictValues, values)", None),
    ("values.valid", f"{O}(PyDictValues, valid)", ("3.13",)),
    ("set.used", f"{O}(PySetObject, used)", None),
    ("set.mask", f"{O}(PySetObject, mask)", None),
    ("set.table", f"{O}(PySetObject, table)", None),
    ("set.entry_size", "sizeof(setentry)", None),
    ("set.entry_key", f"{O}(setentry, key)", None),
    ("cell.ref", f"{O}(PyCellObject, ob_ref)", None),
    ("module.dict", f"{O}(PyModuleObject, md_dict)", None),
    ("weakref.object", f"{O}(PyWeakReference, wr_object)", None),
    ("member_descr.member", f"{O}(PyMemberDescrObject, d_member)", None),
    ("member_def.offset", f"{O}(PyMemberDef, offset)", None),
    ("member_def.type", f"{O}(PyMemberDef, type)", None),
    ("managed_dict_offset", "(char *)_PyObject_ManagedDictPointer(P) - (char *)P", ("3.11",)),
    ("managed_values_offset", "(char *)_PyObject_ValuesPointer(P) - (char *)P", ("3.11",)),
    ("managed_dict_offset", "(char *)_PyObject_DictOrValuesPointer(P) - (char *)P", ("3.12",)),
    ("managed_dict_offset", "MANAGED_DICT_OFFSET", ("3.13",)),
    ("func.globals", f"{O}(PyFunctionObject, func_globals)", None),
]

# 3.13+: layout keys the target's own _Py_DebugOffsets (at the start of
# _PyRuntime) carries; the reader prefers those values over the generated ones.
DEBUG_FIELDS: dict[str, str] = {
    "runtime.interpreters_head": "runtime_state.interpreters_head",
    "interp.next": "interpreter_state.next",
    "interp.threads_head": "interpreter_state.threads_head",
    "interp.modules": "interpreter_state.imports_modules",
    "tstate.size": "thread_state.size",
    "tstate.next": "thread_state.next",
    "tstate.interp": "thread_state.interp",
    "tstate.current_frame": "thread_state.current_frame",
    "tstate.thread_id": "thread_state.thread_id",
    "tstate.native_thread_id": "thread_state.native_thread_id",
    "tstate.datastack_chunk": "thread_state.datastack_chunk",
    "frame.previous": "interpreter_frame.previous",
    "frame.code": "interpreter_frame.executable",
    "frame.instr": "interpreter_frame.instr_ptr",
    "frame.localsplus": "interpreter_frame.localsplus",
    "frame.owner": "interpreter_frame.owner",
    "code.filename": "code_object.filename",
    "code.name": "code_object.name",
    "code.qualname": "code_object.qualname",
    "code.linetable": "code_object.linetable",
    "code.firstlineno": "code_object.firstlineno",
    "code.argcount": "code_object.argcount",
    "code.localsplusnames": "code_object.localsplusnames",
    "code.localspluskinds": "code_object.localspluskinds",
    "code.code_adaptive": "code_object.co_code_adaptive",
    "object.type": "pyobject.ob_type",
    "type.name": "type_object.tp_name",
    "type.flags": "type_object.tp_flags",
    "tuple.item": "tuple_object.ob_item",
    "list.item": "list_object.ob_item",
    "dict.keys": "dict_object.ma_keys",
    "dict.values": "dict_object.ma_values",
    "float.value": "float_object.ob_fval",
    "long.tag": "long_object.lv_tag",
    "long.digit": "long_object.ob_digit",
    "bytes.sval": "bytes_object.ob_sval",
    "str.state": "unicode_object.state",
    "str.length": "unicode_object.length",
    "str.ascii_size": "unicode_object.asciiobject_size",
}
DEBUG_VERSIONS = ("3.13",)

HEADERS = [
    "Python.h", "structmember.h", "frameobject.h", "internal/pycore_frame.h", "internal/pycore_code.h",
    "internal/pycore_interp.h", "internal/pycore_runtime.h", "internal/pycore_dict.h",
    "internal/pycore_object.h", "internal/pycore_moduleobject.h", "internal/pycore_long.h",
]


def generate(include_dir: Path, minor: str) -> dict[str, int]:
    fields = [(k, e) for k, e, vs in FIELDS if vs is None or minor in vs]
    if minor in DEBUG_VERSIONS:
        fields += [(f"debug:{k}", f"{O}(_Py_DebugOffsets, {f})") for k, f in DEBUG_FIELDS.items()]
        fields += [("debug:version", f"{O}(_Py_DebugOffsets, version)"), ("debug:size", "sizeof(_Py_DebugOffsets)"),
                   ("debug:free_threaded", f"{O}(_Py_DebugOffsets, free_threaded)")]
    lines = ["#define Py_BUILD_CORE 1", "#define NDEBUG 1"] + [f'#include "{h}"' for h in HEADERS]
    lines += ["#include <stdio.h>", "#include <stddef.h>", "#define P ((PyObject *)0x10000)", "int main(void) {"]
    lines += [f'    printf("%s %lld\\n", "{k}", (long long)({e}));' for k, e in fields]
    lines += ["    return 0;", "}"]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "layout.c"), Path(tmp, "layout")
        src.write_text("\n".join(lines) + "\n")
        subprocess.run(["gcc", "-w", f"-I{include_dir}", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyenv-root", default=os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
    ap.add_argument("--out", default=str(OUT), help="where to write the module (default: the committed one)")
    args = ap.parse_args()
    layouts: dict[str, dict[str, int]] = {}
    for minor in VERSIONS:
        matches = sorted(Path(args.pyenv_root).glob(f"versions/{minor}.*/include/python{minor}"))
        if not matches:
            print(f"no headers for {minor} under {args.pyenv_root}", file=sys.stderr)
            return 1
        layouts[minor] = generate(matches[-1], minor)
        layouts[minor]["_source"] = str(matches[-1].parent.parent.name)  # type: ignore[assignment]
    body = pprint.pformat(layouts, width=100, sort_dicts=True)
    out = Path(args.out)
    out.write_text(
        '"""Generated by tools/gen_layouts.py from CPython internal headers (x86_64). Do not edit."""\n\n'
        f"LAYOUTS: dict[str, dict[str, int | str]] = {body}\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
