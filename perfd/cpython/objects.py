"""Decode Python objects in another process's memory, within hard bounds.

Every public method returns a value or a ``Failure``; nothing raises. Types
are recognised by their ``tp_flags`` subclass bits (public, stable) and their
``tp_name`` — never by an address we assume. Layout comes from ``Layout``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Union

from perfd.cpython.layouts import Layout
from perfd.cpython.memory import ProcessMemory
from perfd.errors import MemoryReadError, PerfdError

# Py_TPFLAGS_*_SUBCLASS: part of the stable ABI, identical in 3.11-3.13.
_LONG_SUBCLASS = 1 << 24
_LIST_SUBCLASS = 1 << 25
_TUPLE_SUBCLASS = 1 << 26
_BYTES_SUBCLASS = 1 << 27
_UNICODE_SUBCLASS = 1 << 28
_DICT_SUBCLASS = 1 << 29
_TYPE_SUBCLASS = 1 << 31

# numpy's PyArrayObject_fields / PyArray_Descr: numpy's ABI (1.x and 2.x), not CPython's.
_NP_DATA, NP_ND, NP_DIMENSIONS, _NP_STRIDES, _NP_DESCR, _NP_DESCR_TYPE_NUM = 16, 24, 32, 40, 56, 28
_NP_TYPES = {
    0: "bool", 1: "int8", 2: "uint8", 3: "int16", 4: "uint16", 5: "int32", 6: "uint32",
    7: "int64", 8: "uint64", 9: "int64", 10: "uint64", 11: "float32", 12: "float64",
    13: "longdouble", 14: "complex64", 15: "complex128", 16: "clongdouble", 17: "object",
    18: "bytes", 19: "str", 20: "void", 21: "datetime64", 22: "timedelta64", 23: "float16",
}
_T_OBJECT, _T_OBJECT_EX = 6, 16  # PyMemberDef types that hold a PyObject*
_TYPE_READ = 912  # covers every PyTypeObject/PyHeapTypeObject field we read (ht_cached_keys < 900)


@dataclass(frozen=True)
class Failure:
    """Why a value could not be decoded: ``unreadable``, ``bad_object``, ``bound``,
    ``missing`` (no such attribute/key/index) or ``unsupported``."""

    reason: str
    address: int
    detail: str = ""

    def __str__(self) -> str:
        return f"<{self.reason} at {self.address:#x}{': ' + self.detail if self.detail else ''}>"


@dataclass(frozen=True)
class Opaque:
    """An object we name but do not decode (or decoded to a depth bound)."""

    type_name: str
    address: int

    def __str__(self) -> str:
        return f"<{self.type_name} at {self.address:#x}>"


@dataclass(frozen=True)
class ArrayInfo:
    address: int
    ndim: int
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"<ndarray shape={self.shape} dtype={self.dtype} at {self.address:#x}>"


@dataclass(frozen=True)
class SetInfo:
    address: int
    type_name: str
    size: int

    def __str__(self) -> str:
        return f"<{self.type_name} size={self.size} at {self.address:#x}>"


Value = Union[None, bool, int, float, str, bytes, tuple, list, dict, Opaque, ArrayInfo, SetInfo, Failure]


@dataclass
class Limits:
    """Hard bounds for one evaluation: pointer hops, bytes read, items per container."""

    max_hops: int = 100_000
    max_bytes: int = 16 << 20
    max_items: int = 100_000
    max_str: int = 1 << 20
    max_int_digits: int = 2_000


@dataclass(frozen=True)
class TypeInfo:
    address: int
    name: str
    flags: int
    basicsize: int
    dictoffset: int
    dict_addr: int
    mro_addr: int
    cached_keys: int


LOOKUP_CACHE_MAX = 4096


class DecodeError(PerfdError):
    """Internal: a decode step failed. Converted to ``Failure`` at the public edge."""

    def __init__(self, reason: str, address: int, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.failure = Failure(reason, address, detail)


@dataclass
class _Budget:
    limits: Limits
    hops: int = 0
    bytes: int = 0

    def charge(self, addr: int, size: int) -> None:
        self.hops += 1
        self.bytes += size
        if self.hops > self.limits.max_hops or self.bytes > self.limits.max_bytes:
            raise DecodeError("bound", addr, "read budget exhausted")


@dataclass
class ObjectReader:
    """Reads objects of one target. Caches type objects (they outlive samples)
    and where keys sit in dicts (re-checked on every use); values are never cached."""

    mem: ProcessMemory
    layout: Layout
    limits: Limits = field(default_factory=Limits)
    _types: dict[int, TypeInfo] = field(default_factory=dict)
    _where: dict[tuple[int, str | int], tuple[int, int, int]] = field(default_factory=dict)  # see _lookup
    _budget: _Budget | None = None

    @property
    def _limits(self) -> Limits:
        return self._budget.limits if self._budget is not None else self.limits

    # -- low level --------------------------------------------------------
    def _read(self, addr: int, size: int) -> bytes:
        if self._budget is not None:
            self._budget.charge(addr, size)
        try:
            return self.mem.read(addr, size)
        except MemoryReadError as e:
            raise DecodeError("unreadable", addr, str(e)) from None

    def _ptr(self, addr: int) -> int:
        return struct.unpack("<Q", self._read(addr, 8))[0]

    def _cstring(self, addr: int, limit: int = 256) -> str:
        raw = self._read(addr, 1)
        out = bytearray()
        step = 32
        while len(out) < limit:
            try:
                chunk = self.mem.read(addr + len(out), step)
            except MemoryReadError:
                chunk = raw if not out else b"\0"
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                return out.decode("utf-8", "replace")
            out += chunk
        return out.decode("utf-8", "replace")

    def type_info(self, type_addr: int) -> TypeInfo:
        info = self._types.get(type_addr)
        if info is not None:
            return info
        L = self.layout
        raw = self._read(type_addr, _TYPE_READ)
        flags = struct.unpack_from("<Q", raw, L.type_flags)[0]
        heap = bool(flags & L.type_flag_heaptype)
        name_ptr = struct.unpack_from("<Q", raw, L.type_name)[0]
        name = self._cstring(name_ptr) if name_ptr else "?"
        if heap and "." not in name:  # a class statement's tp_name lacks the module; add it
            module = self._type_module(raw)
            if module and module != "builtins":
                name = f"{module}.{name}"
        info = TypeInfo(
            address=type_addr,
            name=name,
            flags=flags,
            basicsize=struct.unpack_from("<q", raw, L.type_basicsize)[0],
            dictoffset=struct.unpack_from("<q", raw, L.type_dictoffset)[0],
            dict_addr=struct.unpack_from("<Q", raw, L.type_dict)[0],
            mro_addr=struct.unpack_from("<Q", raw, L.type_mro)[0],
            cached_keys=struct.unpack_from("<Q", raw, L.type_cached_keys)[0] if heap else 0,
        )
        if len(self._types) > 4096:
            self._types.clear()
        self._types[type_addr] = info
        return info

    def _type_module(self, raw: bytes) -> str | None:
        d = struct.unpack_from("<Q", raw, self.layout.type_dict)[0]
        if not d:
            return None
        try:
            mod = self._dict_get_str(d, "__module__")
            return self._str(mod) if mod else None
        except DecodeError:
            return None

    def type_of(self, addr: int) -> TypeInfo:
        if not addr:
            raise DecodeError("bad_object", addr, "NULL")
        return self.type_info(self._ptr(addr + self.layout.object_type))

    # -- scalars ----------------------------------------------------------
    def _str(self, addr: int, t: TypeInfo | None = None) -> str:
        L = self.layout
        t = t or self.type_of(addr)
        if not t.flags & _UNICODE_SUBCLASS:
            raise DecodeError("bad_object", addr, f"expected str, found {t.name}")
        head = self._read(addr, L.str_compact_size + 8)
        length = struct.unpack_from("<q", head, L.str_length)[0]
        state = struct.unpack_from("<I", head, L.str_state)[0]
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if length < 0 or length > self._limits.max_str or kind not in (1, 2, 4):
            raise DecodeError("bad_object" if length < 0 or kind not in (1, 2, 4) else "bound", addr,
                              f"str length {length} kind {kind}")
        if compact:
            data = addr + (L.str_ascii_size if ascii_ else L.str_compact_size)
        else:
            data = struct.unpack_from("<Q", head, L.str_data)[0]
        raw = self._read(data, length * kind) if length else b""
        codec = {1: "ascii" if ascii_ else "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return raw.decode(codec, "replace")

    def _int(self, addr: int, t: TypeInfo) -> int:
        L = self.layout
        head = self._read(addr, L.long_digit + 4)
        if L.minor >= (3, 12):
            tag = struct.unpack_from("<Q", head, L.long_tag)[0]
            ndigits, sign = tag >> 3, 1 - (tag & 3)
        else:
            size = struct.unpack_from("<q", head, L.var_size)[0]
            ndigits, sign = abs(size), (size > 0) - (size < 0)
        if ndigits > self._limits.max_int_digits:
            raise DecodeError("bound", addr, f"int with {ndigits} digits")
        if ndigits == 0:
            return 0
        raw = head[L.long_digit:] if ndigits == 1 else self._read(addr + L.long_digit, 4 * ndigits)
        value = 0
        for i, digit in enumerate(struct.unpack_from(f"<{ndigits}I", raw)):
            value |= (digit & ((1 << L.long_shift) - 1)) << (L.long_shift * i)
        return sign * value

    def _bytes(self, addr: int) -> bytes:
        size = struct.unpack("<q", self._read(addr + self.layout.var_size, 8))[0]
        if not 0 <= size <= self._limits.max_str:
            raise DecodeError("bound" if size > 0 else "bad_object", addr, f"bytes of size {size}")
        return self._read(addr + self.layout.bytes_sval, size) if size else b""

    def _float(self, addr: int) -> float:
        return struct.unpack("<d", self._read(addr + self.layout.float_value, 8))[0]

    # -- containers -------------------------------------------------------
    def _sequence_items(self, addr: int, t: TypeInfo) -> list[int]:
        L = self.layout
        size = struct.unpack("<q", self._read(addr + L.var_size, 8))[0]
        if size < 0:
            raise DecodeError("bad_object", addr, f"sequence size {size}")
        if size > self._limits.max_items:
            raise DecodeError("bound", addr, f"{size} items")
        if not size:
            return []
        if t.flags & _TUPLE_SUBCLASS:
            base = addr + L.tuple_item
        else:
            base = self._ptr(addr + L.list_item)
        return list(struct.unpack(f"<{size}Q", self._read(base, 8 * size)))

    def _dict_entries(self, addr: int) -> Iterator[tuple[int, int]]:
        """(key address, value address) of a dict, combined or split."""
        for _, k, v in self._keys_entries(*self._dict_tables(addr)):
            yield k, v

    def _dict_tables(self, addr: int) -> tuple[int, int]:
        """A dict's keys object and (split tables only) its values array."""
        L = self.layout
        return self._ptr(addr + L.dict_keys), self._ptr(addr + L.dict_values)

    def _keys_head(self, keys: int) -> tuple[bytes, int]:
        L = self.layout
        head = self._read(keys, L.keys_indices)
        nentries = struct.unpack_from("<q", head, L.keys_nentries)[0]
        if not 0 <= nentries <= self._limits.max_items or head[L.keys_log2_index_bytes] > 40:
            raise DecodeError("bound" if nentries > 0 else "bad_object", keys, f"dict with {nentries} entries")
        return head, nentries

    def _entry_layout(self, keys: int, head: bytes) -> tuple[int, int, int]:
        """(address of entry 0, entry size, key offset in an entry) of a keys object."""
        L = self.layout
        general = head[L.keys_kind] == L.keys_kind_general
        esize = L.keys_entry_size if general else L.keys_unicode_entry_size
        return keys + L.keys_indices + (1 << head[L.keys_log2_index_bytes]), esize, 8 if general else 0

    def _keys_entries(self, keys: int, values: int,
                      known: tuple[bytes, int] | None = None) -> Iterator[tuple[int, int, int]]:
        """(entry index, key address, value address) of the live entries of a keys
        object (``known``: its ``_keys_head``, when the caller read it already)."""
        head, nentries = known or self._keys_head(keys)
        if not nentries:
            return
        entries, esize, key_at = self._entry_layout(keys, head)
        raw = self._read(entries, esize * nentries)
        vals = None
        if values:
            vals = struct.unpack(f"<{nentries}Q", self._read(values + self.layout.values_values, 8 * nentries))
        for i in range(nentries):
            k = struct.unpack_from("<Q", raw, i * esize + key_at)[0]
            v = vals[i] if vals is not None else struct.unpack_from("<Q", raw, i * esize + key_at + 8)[0]
            if k and v:
                yield i, k, v

    def _dict_get_str(self, addr: int, name: str) -> int | None:
        return self._lookup(*self._dict_tables(addr), name)

    def _lookup(self, keys: int, values: int, wanted: str | int) -> int | None:
        """Value address for key ``wanted`` in a keys object (and values array).

        Without the target's string hashes a lookup is a scan — thousands of
        entries for ``sys.modules`` or a module's globals. Where the key sits is
        remembered per keys object and re-checked with two small reads: entries
        are append-only until a resize (which makes a new keys object), so the
        same key object at the same index is the same entry, and an absent key
        stays absent while the entry count and the last entry are unchanged
        (combined tables only: a split table's values differ per instance).
        """
        cached = self._where.get((keys, wanted))
        head, nentries = known = self._keys_head(keys)
        if cached is not None:
            count, index, key_addr = cached
            if index < 0:
                if count == nentries and self._entry_key(keys, head, nentries - 1) == key_addr:
                    return None
            elif index < nentries and self._entry_key(keys, head, index) == key_addr:
                value = self._entry_value(keys, values, head, index)
                if value:
                    return value
        found = self._find(self._keys_entries(keys, values, known), wanted)
        if len(self._where) >= LOOKUP_CACHE_MAX:
            self._where.clear()
        if found is None:
            if not values:  # a split table's keys are shared: absent here may be present in another instance
                self._where[(keys, wanted)] = (nentries, -1, self._entry_key(keys, head, nentries - 1))
            return None
        index, key_addr, value = found
        self._where[(keys, wanted)] = (nentries, index, key_addr)
        return value

    def _entry_key(self, keys: int, head: bytes, index: int) -> int:
        if index < 0:
            return 0
        entries, esize, key_at = self._entry_layout(keys, head)
        return self._ptr(entries + index * esize + key_at)

    def _entry_value(self, keys: int, values: int, head: bytes, index: int) -> int:
        if values:
            return self._ptr(values + self.layout.values_values + 8 * index)
        entries, esize, key_at = self._entry_layout(keys, head)
        return self._ptr(entries + index * esize + key_at + 8)

    def _find(self, entries: Iterator[tuple[int, int, int]], wanted: str | int) -> tuple[int, int, int] | None:
        """(index, key address, value address) of key ``wanted``; key headers are
        fetched in batches (one syscall per 1024 keys) and only plausible matches
        decoded fully."""
        if isinstance(wanted, str):
            head = self.layout.str_compact_size + min(4 * len(wanted), 256)
        else:
            head = self.layout.long_digit + 8
        batch: list[tuple[int, int, int]] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) == 1024:
                found = self._find_in(batch, wanted, head)
                if found is not None:
                    return found
                batch = []
        return self._find_in(batch, wanted, head) if batch else None

    def _find_in(self, batch: list[tuple[int, int, int]], wanted: str | int, head: int) -> tuple[int, int, int] | None:
        if self._budget is not None:
            self._budget.charge(batch[0][1], head * len(batch))
        bufs = self.mem.read_many([(k, head) for _, k, _ in batch])
        L = self.layout
        for (i, k, v), buf in zip(batch, bufs):
            if buf is None:
                continue
            try:
                t = self.type_info(struct.unpack_from("<Q", buf, L.object_type)[0])
            except DecodeError as e:
                if e.failure.reason == "bound":
                    raise
                continue
            if isinstance(wanted, str):
                if not t.flags & _UNICODE_SUBCLASS:
                    continue
                if struct.unpack_from("<q", buf, L.str_length)[0] != len(wanted):
                    continue
                inline = self._inline_str(buf, len(wanted))
                if inline is not None:
                    if inline == wanted:
                        return i, k, v
                    continue
            elif not t.flags & _LONG_SUBCLASS:
                continue
            if self._key_equals(k, wanted):
                return i, k, v
        return None

    def _inline_str(self, buf: bytes, length: int) -> str | None:
        """A compact str decoded from a header buffer, if its data is all inside it."""
        L = self.layout
        state = struct.unpack_from("<I", buf, L.str_state)[0]
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4):
            return None
        start = L.str_ascii_size if ascii_ else L.str_compact_size
        end = start + kind * length
        if end > len(buf):
            return None
        codec = {1: "ascii" if ascii_ else "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return buf[start:end].decode(codec, "replace")

    def _key_equals(self, key_addr: int, wanted: str | int) -> bool:
        try:
            t = self.type_of(key_addr)
            if isinstance(wanted, str):
                return bool(t.flags & _UNICODE_SUBCLASS) and self._str(key_addr, t) == wanted
            return bool(t.flags & _LONG_SUBCLASS) and self._int(key_addr, t) == wanted
        except DecodeError as e:
            if e.failure.reason == "bound":
                raise
            return False

    def _set_size(self, addr: int) -> int:
        return struct.unpack("<q", self._read(addr + self.layout.set_used, 8))[0]

    def set_members(self, addr: int) -> list[int]:
        """Addresses of a set's members (skipping empty and dummy slots)."""
        L = self.layout
        mask = struct.unpack("<q", self._read(addr + L.set_mask, 8))[0]
        if not 0 <= mask < self._limits.max_items * 8:
            raise DecodeError("bound", addr, f"set mask {mask}")
        table = self._ptr(addr + L.set_table)
        raw = self._read(table, (mask + 1) * L.set_entry_size)
        out = []
        for i in range(mask + 1):
            key, h = struct.unpack_from("<Qq", raw, i * L.set_entry_size)
            if key and h != -1:
                out.append(key)
        return out

    def _ndarray(self, addr: int) -> ArrayInfo:
        raw = self._read(addr, 64)
        nd = struct.unpack_from("<i", raw, NP_ND)[0]
        if not 0 <= nd <= 64:
            raise DecodeError("bad_object", addr, f"ndarray with {nd} dims")
        dims = struct.unpack_from("<Q", raw, NP_DIMENSIONS)[0]
        shape = struct.unpack(f"<{nd}q", self._read(dims, 8 * nd)) if nd else ()
        if any(n < 0 for n in shape):
            raise DecodeError("bad_object", addr, f"ndarray shape {shape}")
        if nd and all(n > 0 for n in shape):
            self._check_extent(addr, raw, shape)
        descr = struct.unpack_from("<Q", raw, _NP_DESCR)[0]
        type_num = struct.unpack("<i", self._read(descr + _NP_DESCR_TYPE_NUM, 4))[0]
        return ArrayInfo(addr, nd, tuple(shape), _NP_TYPES.get(type_num, f"type{type_num}"))

    def _check_extent(self, addr: int, raw: bytes, shape: tuple[int, ...]) -> None:
        """An array read through a stale pointer shows a shape of random numbers:
        its last element must lie in readable memory, or the array is not real."""
        strides = struct.unpack(f"<{len(shape)}q", self._read(struct.unpack_from("<Q", raw, _NP_STRIDES)[0],
                                                              8 * len(shape)))
        data = struct.unpack_from("<Q", raw, _NP_DATA)[0]
        last = data + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
        first = data + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
        for edge in {first, last}:
            self._read(edge, 1)  # DecodeError("unreadable") past the mapping

    # -- attributes -------------------------------------------------------
    def _attribute(self, addr: int, name: str) -> int | None:
        """Address of ``obj.name`` (instance dict/values, slots, module dict, class attrs)."""
        L = self.layout
        t = self.type_of(addr)
        if t.name == "module":
            d = self._ptr(addr + L.module_dict)
            return self._dict_get_str(d, name) if d else None
        if t.flags & _TYPE_SUBCLASS:  # a class: its own dict, then its MRO
            return self._class_attribute(addr, name)[0]
        class_value, descr_kind = self._class_lookup(t, name)
        if descr_kind == "member_descriptor":
            member = self._ptr(class_value + L.member_descr_member)
            mtype = struct.unpack("<i", self._read(member + L.member_def_type, 4))[0]
            offset = struct.unpack("<q", self._read(member + L.member_def_offset, 8))[0]
            if mtype not in (_T_OBJECT, _T_OBJECT_EX) or not 0 < offset < 1 << 20:
                raise DecodeError("unsupported", addr, f"slot {name!r} is not an object slot")
            return self._ptr(addr + offset) or None
        found = self._instance_dict_get(addr, t, name)
        if found is not None:
            return found
        return class_value

    def _instance_dict_get(self, addr: int, t: TypeInfo, name: str) -> int | None:
        L = self.layout
        inline_flag = L.get("type.flag_inline_values", 0)
        if L.minor >= (3, 13) and t.flags & inline_flag:
            dict_ptr = self._ptr(addr + L.managed_dict_offset)
            if dict_ptr:
                return self._dict_get_str(dict_ptr, name)
            values = addr + t.basicsize
            if self._read(values + L.values_valid, 1)[0] and t.cached_keys:
                return self._values_get(t.cached_keys, values, name)
            return None
        if t.flags & L.type_flag_managed_dict:
            if L.minor == (3, 11):
                values = self._ptr(addr + L.managed_values_offset)
                if values and t.cached_keys:
                    return self._values_get(t.cached_keys, values, name)
                dict_ptr = self._ptr(addr + L.managed_dict_offset)
            elif L.minor == (3, 12):
                tagged = self._ptr(addr + L.managed_dict_offset)
                if tagged & 1:
                    return self._values_get(t.cached_keys, tagged + 1, name) if t.cached_keys else None
                dict_ptr = tagged
            else:
                dict_ptr = self._ptr(addr + L.managed_dict_offset)
            return self._dict_get_str(dict_ptr, name) if dict_ptr else None
        if t.dictoffset > 0:
            dict_ptr = self._ptr(addr + t.dictoffset)
            return self._dict_get_str(dict_ptr, name) if dict_ptr else None
        return None

    def _values_get(self, keys: int, values: int, name: str) -> int | None:
        return self._lookup(keys, values, name)

    def _mro(self, t: TypeInfo) -> list[int]:
        if not t.mro_addr:
            return [t.address]
        return self._sequence_items(t.mro_addr, self.type_of(t.mro_addr))

    def _class_lookup(self, t: TypeInfo, name: str) -> tuple[int | None, str | None]:
        for type_addr in self._mro(t):
            info = self.type_info(type_addr)
            if not info.dict_addr:
                continue
            v = self._dict_get_str(info.dict_addr, name)
            if v is not None:
                return v, self.type_of(v).name
        return None, None

    def _class_attribute(self, cls_addr: int, name: str) -> tuple[int | None, str | None]:
        return self._class_lookup(self.type_info(cls_addr), name)

    # -- public API -------------------------------------------------------
    def decode(self, addr: int, depth: int = 1, limits: Limits | None = None) -> Value:
        """The value at ``addr``: scalars become Python values; containers are
        expanded ``depth`` levels; everything else is ``Opaque``."""
        return self._guard(lambda: self._decode(addr, depth), limits)

    def _guard(self, fn, limits: Limits | None):  # noqa: ANN001, ANN202 - internal trampoline
        outer = self._budget
        if outer is None:
            self._budget = _Budget(limits or self.limits)
        try:
            return fn()
        except DecodeError as e:
            return e.failure
        except (MemoryReadError, struct.error, UnicodeError, ValueError, OverflowError, IndexError) as e:
            return Failure("bad_object", addr_of(e), str(e))
        finally:
            if outer is None:
                self._budget = None

    def _decode(self, addr: int, depth: int) -> Value:
        t = self.type_of(addr)
        f = t.flags
        if f & _UNICODE_SUBCLASS:
            return self._str(addr, t)
        if f & _LONG_SUBCLASS:
            value = self._int(addr, t)
            return bool(value) if t.name == "bool" else value
        if t.name == "NoneType":
            return None
        if t.name == "float":
            return self._float(addr)
        if f & _BYTES_SUBCLASS:
            return self._bytes(addr)
        if f & (_TUPLE_SUBCLASS | _LIST_SUBCLASS):
            if depth <= 0:
                return Opaque(t.name, addr)
            items = [self._decode(a, depth - 1) if a else None for a in self._sequence_items(addr, t)]
            return tuple(items) if f & _TUPLE_SUBCLASS else items
        if f & _DICT_SUBCLASS:
            if depth <= 0:
                return Opaque(t.name, addr)
            out: dict = {}
            for k, v in self._dict_entries(addr):
                key = self._decode(k, 0)
                try:
                    hash(key)
                except TypeError:
                    key = str(key)
                out[key] = self._decode(v, depth - 1)
            return out
        if t.name in ("set", "frozenset"):
            return SetInfo(addr, t.name, self._set_size(addr))
        if t.name == "cell":
            ref = self._ptr(addr + self.layout.cell_ref)
            return self._decode(ref, depth) if ref else Failure("missing", addr, "empty cell")
        if t.name == "numpy.ndarray":
            return self._ndarray(addr)
        return Opaque(t.name, addr)

    def attribute(self, addr: int, name: str) -> int | Failure:
        """Address of ``obj.name`` or a ``Failure``."""
        def run() -> int | Failure:
            found = self._attribute(addr, name)
            return found if found else Failure("missing", addr, f"no attribute {name!r}")
        return self._guard(run, None)

    def item(self, addr: int, key: str | int) -> int | Failure:
        """Address of ``obj[key]`` for dicts (str/int keys) and sequences (int index)."""
        return self._guard(lambda: self._item(addr, key), None)

    def resolve(self, addr: int, steps: list[tuple[str, str | int]], limits: Limits | None = None) -> int | Failure:
        """Follow ``("attr", name)`` / ``("item", key)`` steps from ``addr`` under one budget."""
        def run() -> int | Failure:
            cur = addr
            for kind, key in steps:
                nxt = self._attribute(cur, key) if kind == "attr" else self._item(cur, key)
                if isinstance(nxt, Failure):
                    return nxt
                if not nxt:
                    what = f"attribute {key!r}" if kind == "attr" else f"key {key!r}"
                    return Failure("missing", cur, f"no {what}")
                cur = nxt
            return cur
        return self._guard(run, limits)

    def _item(self, addr: int, key: str | int) -> int | Failure:
        t = self.type_of(addr)
        if t.flags & _DICT_SUBCLASS:
            found = self._lookup(*self._dict_tables(addr), key)
            return found if found is not None else Failure("missing", addr, f"no key {key!r}")
        if t.flags & (_TUPLE_SUBCLASS | _LIST_SUBCLASS) and isinstance(key, int):
            items = self._sequence_items(addr, t)
            if -len(items) <= key < len(items):
                return items[key]
            return Failure("missing", addr, f"index {key} out of range")
        return Failure("unsupported", addr, f"cannot index {t.name}")

    def dict_items(self, addr: int) -> list[tuple[int, int]] | Failure:
        """(key, value) addresses of a dict."""
        return self._guard(lambda: list(self._dict_entries(addr)), None)

    def members(self, addr: int) -> list[int] | Failure:
        """Addresses of a set's members."""
        return self._guard(lambda: self.set_members(addr), None)

    def sequence(self, addr: int) -> list[int] | Failure:
        """Item addresses of a tuple or list."""
        return self._guard(lambda: self._sequence_items(addr, self.type_of(addr)), None)

    def type_name(self, addr: int) -> str | Failure:
        return self._guard(lambda: self.type_of(addr).name, None)

    def string(self, addr: int) -> str | Failure:
        return self._guard(lambda: self._str(addr), None)

    def pointer(self, addr: int) -> int | Failure:
        return self._guard(lambda: self._ptr(addr), None)


def addr_of(e: Exception) -> int:
    return getattr(e, "address", 0)


def short_repr(value: Value) -> object:
    """JSON form of a decoded value: str/int/float/bool/None stay native,
    anything else is a short ``<type at 0x…>`` string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (Opaque, Failure, ArrayInfo, SetInfo)):
        return str(value)
    if isinstance(value, bytes):
        return f"<bytes len={len(value)}>"
    if isinstance(value, (tuple, list, dict)):
        return f"<{type(value).__name__} len={len(value)}>"
    return f"<{type(value).__name__}>"
