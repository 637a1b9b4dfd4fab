# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Kafka record-batch codec (magic 2), compiled twin of ``aiokprod._python.codec``.

Same names, signatures and bytes as the Python twin. The builder is the producer's hot path: records are
written straight into one growable C buffer with the 61-byte batch header reserved at its front and
back-patched by :meth:`RecordBatchBuilder.build`; an append of bytes key/value without headers creates no
Python object. Decoding is not on the hot path: it is the Python twin's code, re-exported, so both
implementations give identical results by construction.
"""
cimport cython

from aiokprod._native._murmur2 cimport murmur2_bytes
from cpython.buffer cimport PyBUF_READ, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport (
    _PyBytes_Resize, PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_Check
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_REFCNT
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_CheckExact
from libc.stdint cimport int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t, INT32_MAX
from libc.string cimport memcpy, memset

from crc32c import crc32c as _crc32c

from aiokprod.compression import (
    CODEC_IDS as _CODEC_IDS, LZ4_FRAME_ARGS as _LZ4_FRAME_ARGS, XERIAL_BLOCK as _XERIAL_BLOCK_PY,
    XERIAL_HEADER as _XERIAL_HEADER, codec_id, compress, lz4_frame_compress as _lz4_frame_compress,
    snappy_compress_raw as _snappy_compress_raw, zstd_compressor,
)
from aiokprod.errors import CorruptRecordError

__all__ = (
    "crc32c", "murmur2", "key_partition",
    "encode_varint", "encode_uvarint", "decode_varint", "decode_uvarint", "size_of_varint", "size_of_uvarint",
    "record_size_upper_bound", "RecordBatchBuilder", "BATCH_HEADER_SIZE", "RECORD_OVERHEAD_MAX",
)
# No record decoder here: the one decoder is Python (aiokprod._python.codec), shared by both
# implementations through aiokprod.codec. See there for why.

# Batch header, big-endian (61 bytes), back-patched by build():
#   0 baseOffset int64        8 batchLength int32 (bytes after this field)   12 partitionLeaderEpoch int32
#  16 magic int8 (=2)        17 crc uint32 (CRC-32C of bytes 21..end)         21 attributes int16
#  23 lastOffsetDelta int32  27 baseTimestamp int64   35 maxTimestamp int64    43 producerId int64
#  51 producerEpoch int16    53 baseSequence int32    57 recordsCount int32    61 records...
cdef enum:
    HEADER_SIZE = 61
    CRC_OFFSET = 17
    ATTRIBUTES_OFFSET = 21
    LOG_OVERHEAD = 12
    ATTR_TRANSACTIONAL = 0x10
    CODEC_SNAPPY = 2
    CODEC_LZ4 = 3
    CODEC_ZSTD = 4
    # length varint (5) + attributes (1) + timestampDelta varlong (10) + offsetDelta varint (5)
    OVERHEAD_MAX = 21

BATCH_HEADER_SIZE = HEADER_SIZE

# The framing constants live in aiokprod.compression (one definition for both twins); copied into C here.
cdef Py_ssize_t XERIAL_BLOCK = _XERIAL_BLOCK_PY
cdef Py_ssize_t XERIAL_HEADER_LEN = len(_XERIAL_HEADER)
cdef object _LZ4_BLOCK_SIZE, _LZ4_CONTENT_CHECKSUM, _LZ4_BLOCK_CHECKSUM, _LZ4_BLOCK_LINKED, _LZ4_STORE_SIZE
_LZ4_BLOCK_SIZE, _LZ4_CONTENT_CHECKSUM, _LZ4_BLOCK_CHECKSUM, _LZ4_BLOCK_LINKED, _LZ4_STORE_SIZE = _LZ4_FRAME_ARGS
RECORD_OVERHEAD_MAX = OVERHEAD_MAX


def crc32c(data):
    """CRC-32C (Castagnoli) of a bytes-like object, by the ``crc32c`` package's C code."""
    return _crc32c(data)


# --- small C helpers ----------------------------------------------------------------------------------

# Cython's implicit int conversion truncates floats; the Python twin (operator.index) refuses them. These
# helpers give the same TypeError and OverflowError in both twins.
cdef inline int64_t _i64(object o) except? -1:
    if not PyLong_Check(o):
        o = PyNumber_Index(o)
    return <int64_t>o


cdef inline uint64_t _u64(object o) except? 0xFFFFFFFFFFFFFFFF:
    if not PyLong_Check(o):
        o = PyNumber_Index(o)
    return <uint64_t>o


cdef int64_t _i64_in(object o, int bits, str name) except? -1:
    cdef int64_t v = _i64(o)
    cdef int64_t limit = (<int64_t>1) << (bits - 1)
    if v < -limit or v >= limit:
        raise OverflowError(f"{name}={v} does not fit a signed {bits}-bit field")
    return v


cdef inline Py_ssize_t _ssize(object o) except? -1:
    if not PyLong_Check(o):
        o = PyNumber_Index(o)
    return <Py_ssize_t>o

cdef inline uint64_t _zigzag(int64_t v) noexcept nogil:
    # (v << 1) ^ (v >> 63): small negatives become small unsigned values. The shift of a negative signed
    # value is arithmetic on every compiler CPython supports.
    return (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)


cdef extern from *:
    """
    /* Bytes of an unsigned LEB128 varint: ceil(significant bits / 7), at least 1. (9 * bits + 64) / 64
       equals that for bits in 1..64 and costs a multiply and a shift instead of a loop or a division. */
    static inline int aiokprod_uvarint_size(unsigned long long u) {
        if (u < 0x80) return 1;
        if (u < 0x4000) return 2;
        int bits = 64 - __builtin_clzll(u | 1);
        return (9 * bits + 64) >> 6;
    }
    """
    int aiokprod_uvarint_size(unsigned long long u) noexcept nogil
    # GCC and Clang (the builds we support, like __builtin_clzll above): nonzero if a - b overflowed.
    bint aiokprod_sub_overflow "__builtin_sub_overflow"(int64_t a, int64_t b, int64_t* out) noexcept nogil


cdef inline int _uvarint_size(uint64_t u) noexcept nogil:
    return aiokprod_uvarint_size(u)


cdef inline char* _put_uvarint(char* p, uint64_t u) noexcept nogil:
    # LEB128: 7 bits per byte, least significant group first, high bit = "more follows". A record's
    # varints are almost all 1 or 2 bytes (offset and timestamp deltas below 8192, lengths below 8 KiB):
    # those are written without the loop.
    if u < 0x80:
        p[0] = <char>u
        return p + 1
    if u < 0x4000:
        p[0] = <char>(u | 0x80)
        p[1] = <char>(u >> 7)
        return p + 2
    while u >= 0x80:
        p[0] = <char>((u & 0x7F) | 0x80)
        p += 1
        u >>= 7
    p[0] = <char>u
    return p + 1


cdef inline void _put_be64(char* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <char>(v >> (56 - 8 * i))


cdef inline void _put_be32(char* p, uint32_t v) noexcept nogil:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline void _put_le32(char* p, uint32_t v) noexcept nogil:
    p[0] = <char>v
    p[1] = <char>(v >> 8)
    p[2] = <char>(v >> 16)
    p[3] = <char>(v >> 24)


cdef inline void _put_be16(char* p, uint32_t v) noexcept nogil:
    p[0] = <char>(v >> 8)
    p[1] = <char>v


cdef int _get_view(object obj, Py_buffer* view, str field) except -1:
    """Borrow ``obj``'s bytes through the buffer protocol; TypeError naming ``field`` if it has none."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except BufferError:
        # A non-contiguous buffer (a strided memoryview): take a contiguous copy, as the Python twin does.
        PyObject_GetBuffer(memoryview(obj).tobytes(), view, PyBUF_SIMPLE)
    except TypeError:
        raise TypeError(f"{field} must be bytes-like or None, not {type(obj).__name__}") from None
    return 0


cdef object _to_bytes(object obj, str field):
    cdef Py_buffer view
    _get_view(obj, &view, field)
    try:
        return PyBytes_FromStringAndSize(<char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# --- murmur2 ------------------------------------------------------------------------------------------

cdef int32_t _murmur2_obj(object data) except? -1:
    cdef Py_buffer view
    cdef int32_t result
    if PyBytes_CheckExact(data):
        return murmur2_bytes(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    _get_view(data, &view, "murmur2 data")
    result = murmur2_bytes(<const unsigned char*>view.buf, view.len)
    PyBuffer_Release(&view)
    return result


def murmur2(data):
    """The Java client's murmur2 (seed 0x9747b28c), as a signed 32-bit int like Java's ``int``."""
    return _murmur2_obj(data)


def key_partition(key, num_partitions):
    """The Java default partitioner for a keyed record: ``(murmur2(key) & 0x7fffffff) % num_partitions``."""
    cdef Py_ssize_t n = _ssize(num_partitions)
    if n <= 0:
        raise ValueError(f"num_partitions must be positive, got {n}")
    return (<Py_ssize_t>(_murmur2_obj(key) & 0x7FFFFFFF)) % n


# --- varints ------------------------------------------------------------------------------------------

cdef Py_ssize_t _write_uvarint(object buf, Py_ssize_t pos, uint64_t u) except -1:
    if not isinstance(buf, bytearray):
        raise TypeError(f"buf must be a bytearray, not {type(buf).__name__}")
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    cdef int n = _uvarint_size(u)
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(buf)
    if pos + n > old:
        PyByteArray_Resize(buf, pos + n)
        if pos > old:  # zero the gap, as the Python twin's extend does
            memset(PyByteArray_AS_STRING(buf) + old, 0, pos - old)
    _put_uvarint(PyByteArray_AS_STRING(buf) + pos, u)
    return pos + n


def encode_varint(buf, pos, value):
    """Write ``value`` (signed 64-bit, zig-zag) at ``buf[pos]``, growing ``buf`` if needed; return the end."""
    return _write_uvarint(buf, _ssize(pos), _zigzag(_i64(value)))


def encode_uvarint(buf, pos, value):
    """Write ``value`` (unsigned 64-bit) at ``buf[pos]``, growing ``buf`` if needed; return the end."""
    return _write_uvarint(buf, _ssize(pos), _u64(value))


cdef uint64_t _read_uvarint(object data, Py_ssize_t* pos) except? 0xFFFFFFFFFFFFFFFF:
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t i = pos[0], start = pos[0], end
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char b
    if i < 0:
        raise ValueError(f"pos must be >= 0, got {i}")
    _get_view(data, &view, "data")
    p = <const unsigned char*>view.buf
    end = view.len
    try:
        while True:
            if i >= end:
                raise CorruptRecordError(f"varint truncated at byte {i} (started at byte {start})")
            if shift > 63:
                raise CorruptRecordError(f"varint at byte {start} is longer than 10 bytes")
            b = p[i]
            i += 1
            # Bits beyond 64 in a 10th byte fall off, as in Java's ByteUtils.
            result |= (<uint64_t>(b & 0x7F)) << shift
            if not (b & 0x80):
                pos[0] = i
                return result
            shift += 7
    finally:
        PyBuffer_Release(&view)


def decode_uvarint(data, pos):
    """Read an unsigned varint at ``data[pos]``: ``(value, new_pos)``; CorruptRecordError if truncated or
    longer than 10 bytes."""
    cdef Py_ssize_t p = _ssize(pos)
    cdef uint64_t u = _read_uvarint(data, &p)
    return u, p


def decode_varint(data, pos):
    """Read a zig-zag signed varint at ``data[pos]``: ``(value, new_pos)``."""
    cdef Py_ssize_t p = _ssize(pos)
    cdef uint64_t u = _read_uvarint(data, &p)
    return <int64_t>((u >> 1) ^ (~(u & 1) + 1)), p


def size_of_varint(value):
    return _uvarint_size(_zigzag(_i64(value)))


def size_of_uvarint(value):
    return _uvarint_size(_u64(value))


# --- records ------------------------------------------------------------------------------------------

cdef object _normalize_headers(object headers):
    """Validate headers and return a sequence of (str | bytes, bytes | None) pairs; the input itself when
    it is already in that shape (the common case: no copies)."""
    cdef Py_ssize_t i, n
    cdef list out
    if type(headers) is not list and type(headers) is not tuple:
        if not isinstance(headers, (list, tuple)):
            raise TypeError(
                f"headers must be a list of (str, bytes | None) pairs, not {type(headers).__name__}")
    n = len(headers)
    for i in range(n):
        header = headers[i]
        if type(header) is tuple and len(<tuple>header) == 2:
            hkey = (<tuple>header)[0]
            hval = (<tuple>header)[1]
            if ((PyUnicode_CheckExact(hkey) or PyBytes_CheckExact(hkey))
                    and (hval is None or PyBytes_CheckExact(hval))):
                continue
        break
    else:
        return headers
    # Slow path: something needs converting (or is wrong); rebuild the whole list.
    out = []
    for header in headers:
        if not isinstance(header, (tuple, list)) or len(header) != 2:
            raise TypeError(f"each header must be a (str, bytes | None) pair, not {header!r}")
        hkey, hval = header
        if isinstance(hkey, str):
            pass
        elif isinstance(hkey, (bytes, bytearray, memoryview)):
            hkey = bytes(hkey)
        else:
            raise TypeError(f"header key must be str or bytes, not {type(hkey).__name__}")
        if hval is not None and not PyBytes_CheckExact(hval):
            hval = _to_bytes(hval, "header value")
        out.append((hkey, hval))
    return out


cdef inline const char* _header_key_ptr(object hkey, Py_ssize_t* size) except NULL:
    if PyBytes_CheckExact(hkey):
        size[0] = PyBytes_GET_SIZE(hkey)
        return PyBytes_AS_STRING(hkey)
    # For str, CPython caches the UTF-8 form in the object (ASCII strings are their own UTF-8): no copy.
    return PyUnicode_AsUTF8AndSize(hkey, size)


cdef Py_ssize_t _headers_size(object headers) except -1:
    """Bytes of the headers section: headersCount varint, then per header keyLength varint, key (UTF-8),
    valueLength varint (-1 = null), value."""
    cdef Py_ssize_t n = len(headers), i, klen, vlen, size
    size = _uvarint_size(_zigzag(n))
    for i in range(n):
        hkey, hval = headers[i]
        _header_key_ptr(hkey, &klen)
        vlen = -1 if hval is None else PyBytes_GET_SIZE(hval)
        size += _uvarint_size(_zigzag(klen)) + klen + _uvarint_size(_zigzag(vlen)) + (vlen if vlen > 0 else 0)
    return size


cdef char* _put_headers(char* p, object headers) except NULL:
    cdef Py_ssize_t n = len(headers), i, klen, vlen
    cdef const char* kp
    p = _put_uvarint(p, _zigzag(n))
    for i in range(n):
        hkey, hval = headers[i]
        kp = _header_key_ptr(hkey, &klen)
        p = _put_uvarint(p, _zigzag(klen))
        memcpy(p, kp, klen)
        p += klen
        if hval is None:
            p = _put_uvarint(p, _zigzag(-1))
        else:
            vlen = PyBytes_GET_SIZE(hval)
            p = _put_uvarint(p, _zigzag(vlen))
            memcpy(p, PyBytes_AS_STRING(hval), vlen)
            p += vlen
    return p


def record_size_upper_bound(key, value, headers):
    """Most bytes one record with these fields can take in a batch, plus the 61-byte batch header."""
    cdef Py_ssize_t klen = -1, vlen = -1, size
    if key is not None:
        klen = PyBytes_GET_SIZE(key) if PyBytes_CheckExact(key) else PyBytes_GET_SIZE(_to_bytes(key, "key"))
    if value is not None:
        vlen = (PyBytes_GET_SIZE(value) if PyBytes_CheckExact(value)
                else PyBytes_GET_SIZE(_to_bytes(value, "value")))
    size = HEADER_SIZE + OVERHEAD_MAX
    size += _uvarint_size(_zigzag(klen)) + (klen if klen > 0 else 0)
    size += _uvarint_size(_zigzag(vlen)) + (vlen if vlen > 0 else 0)
    if headers is None:
        size += 1
    else:
        size += _headers_size(_normalize_headers(headers))
    return size


# Buffers of finished builders, for the next ones (a producer opens a batch, of the same batch_size, every
# ~16 KiB of records): a pop instead of a malloc of ~16 KiB and its free, and no fresh heap pages for the
# records to fault in. Only buffers nobody else can see come here (see __dealloc__); at most FREE_BUFFERS,
# so an idle process keeps at most that many batch buffers.
cdef enum:
    FREE_BUFFERS = 8
cdef PyObject* _free_buffers[FREE_BUFFERS]
cdef int _n_free = 0


cdef object _take_buffer(Py_ssize_t cap):
    """A bytes object of ``cap`` bytes that we alone hold (contents undefined)."""
    global _n_free
    cdef object buf
    while _n_free:
        _n_free -= 1
        buf = <object>_free_buffers[_n_free]   # a new reference...
        Py_DECREF(buf)                         # ...and the list's, released: ``buf`` is the only one now
        if PyBytes_GET_SIZE(buf) == cap:
            return buf
    return PyBytes_FromStringAndSize(NULL, cap)


cdef void _give_buffer(object buf) noexcept:
    global _n_free
    if _n_free < FREE_BUFFERS:
        Py_INCREF(buf)
        _free_buffers[_n_free] = <PyObject*>buf
        _n_free += 1


cdef dict _CODEC_IDS_C = _CODEC_IDS
cdef object _zstd_default = None  # zstd_compressor(None), looked up once


cdef void _set_zstd_default() except *:
    global _zstd_default
    _zstd_default = zstd_compressor(None)


@cython.final
cdef class RecordBatchBuilder:
    """Accumulates records of one magic-2 batch; :meth:`build` freezes it with the producer's fields."""

    # The batch is written straight into a bytes object of _cap bytes: header space (61 bytes) + records,
    # uncompressed. Until build() hands it out (_published) nobody else can see it, so it is mutable; an
    # uncompressed build() patches the header in place, shrinks it to size and returns it: no copy and no
    # second allocation per batch. Appending after that copies it first (copy-on-write).
    # The fields are declared in codec.pxd, so that appender.pyx can read _len.

    def __init__(self, compression="none", batch_size=16384, compression_level=None):
        # One per batch: the codec name by a dict lookup in C, not a call into compression.codec_id (which
        # is still what names a bad value).
        cdef PyObject* cid = PyDict_GetItem(_CODEC_IDS_C, compression) if type(compression) is str else NULL
        self._codec = codec_id(compression) if cid is NULL else <int><object>cid
        self._batch_size = _ssize(batch_size)
        self._level = None if compression_level is None else int(compression_level)
        # What build() compresses with, resolved once per batch rather than per build.
        if self._codec == CODEC_LZ4:
            self._compressor = 0 if self._level is None else self._level  # lz4.frame's compression_level
        elif self._codec == CODEC_ZSTD:
            if self._level is None:
                if _zstd_default is None:
                    _set_zstd_default()
                self._compressor = _zstd_default
            else:
                self._compressor = zstd_compressor(self._level)
        else:
            self._compressor = None
        # Room for a full batch up front, so a batch of small records never reallocates.
        cdef Py_ssize_t cap = self._batch_size + 256
        if cap < 1024:
            cap = 1024
        elif cap > (1 << 20):
            cap = 1 << 20
        self._data = _take_buffer(cap)
        self._buf = PyBytes_AS_STRING(self._data)
        self._cap = cap
        self._published = False
        self._len = HEADER_SIZE
        self._count = 0
        self._first_ts = 0
        self._max_ts = 0
        self._payload = None
        self._payload_count = -1
        self._built = None

    def __dealloc__(self):
        # A buffer never handed out and referenced by nobody else (every compressed batch's: build() hands
        # out a new object holding the compressed records) goes back to the free list for the next batch.
        if self._data is not None and not self._published and Py_REFCNT(self._data) == 1:
            _give_buffer(self._data)

    cdef int _grow(self, Py_ssize_t needed) except -1:
        """Make room for ``needed`` bytes in a buffer we alone own."""
        cdef Py_ssize_t cap = self._cap * 2
        if cap < needed:
            cap = needed
        cdef object data
        if self._published:
            # build() handed _data out: it is immutable now; continue in a private copy.
            data = PyBytes_FromStringAndSize(NULL, cap)
            memcpy(PyBytes_AS_STRING(data), self._buf, self._len)
            self._data = data
            self._published = False
            self._buf = PyBytes_AS_STRING(data)
            self._cap = cap
            return 0
        return self._resize_private(cap)

    cdef int _resize_private(self, Py_ssize_t size) except -1:
        # _data is ours alone (refcount 1), so _PyBytes_Resize may realloc it in place. It needs the only
        # reference: move ours into ``raw``. On failure it frees the object; start an empty batch then.
        if self._data is None:
            raise RuntimeError("RecordBatchBuilder.__init__ was not called")
        cdef PyObject* raw = <PyObject*>self._data
        Py_INCREF(self._data)
        self._data = None
        try:
            _PyBytes_Resize(&raw, size)
        except BaseException:
            self._data = PyBytes_FromStringAndSize(NULL, 1024)
            self._buf = PyBytes_AS_STRING(self._data)
            self._cap = 1024
            self._len = HEADER_SIZE
            self._count = 0
            raise
        self._data = <object>raw
        Py_DECREF(self._data)
        self._buf = PyBytes_AS_STRING(self._data)
        self._cap = size
        return 0

    def __len__(self):
        return self._count

    @property
    def size_in_bytes(self):
        """Exact uncompressed size of the batch as it stands (61-byte header + records)."""
        return self._len

    @property
    def first_timestamp(self):
        return self._first_ts if self._count else None

    @property
    def max_timestamp(self):
        return self._max_ts if self._count else None

    # The public entry is aiokprod_append_fastcall (installed under this name below the class): it takes
    # the positional calls, and hands keywords or a wrong argument count to this Cython wrapper, whose
    # generated parser binds them and raises the usual TypeErrors. Both end in _builder_append.
    # binding=False makes it a plain method descriptor, which aiokprod_install_append expects.
    @cython.binding(False)
    def append(self, timestamp_ms, key, value, headers=None):
        """Add one record; False (nothing added) if it would push a non-empty batch past batch_size."""
        return _builder_append(self, timestamp_ms, key, value, headers)

    cdef int _append(self, int64_t ts, const char* kp, Py_ssize_t klen, const char* vp, Py_ssize_t vlen,
                     object headers) except -1:
        # Record layout: length varint (of what follows), attributes int8 (0), timestampDelta varlong,
        # offsetDelta varint, keyLength varint (-1 = null), key, valueLength varint (-1 = null), value,
        # headersCount varint, headers.
        cdef int32_t count = self._count
        cdef int64_t delta = 0
        # ts - first can overflow int64 (UB in C): the builtin checks it in one instruction.
        if count and aiokprod_sub_overflow(ts, self._first_ts, &delta):
            raise OverflowError(f"timestamp {ts} is too far from the batch's first ({self._first_ts})")
        cdef uint64_t zdelta = _zigzag(delta)
        cdef uint64_t zcount = (<uint64_t>count) << 1     # zig-zag of a non-negative value
        cdef uint64_t zklen = _zigzag(klen)
        cdef uint64_t zvlen = _zigzag(vlen)
        cdef Py_ssize_t hsize = 1 if headers is None else _headers_size(headers)
        cdef Py_ssize_t body = (1 + _uvarint_size(zdelta) + _uvarint_size(zcount)
                                + _uvarint_size(zklen) + (klen if klen > 0 else 0)
                                + _uvarint_size(zvlen) + (vlen if vlen > 0 else 0) + hsize)
        cdef Py_ssize_t total = _uvarint_size((<uint64_t>body) << 1) + body
        cdef Py_ssize_t end = self._len + total
        if end > self._batch_size and count:
            return 0
        if count >= INT32_MAX:
            return 0  # offset deltas are int32
        if end > self._cap or self._published:
            self._grow(end)
        cdef char* p = self._buf + self._len
        p = _put_uvarint(p, (<uint64_t>body) << 1)
        p[0] = 0
        p = _put_uvarint(p + 1, zdelta)
        p = _put_uvarint(p, zcount)
        p = _put_uvarint(p, zklen)
        if klen > 0:
            memcpy(p, kp, klen)
            p += klen
        p = _put_uvarint(p, zvlen)
        if vlen > 0:
            memcpy(p, vp, vlen)
            p += vlen
        if headers is None:
            p[0] = 0
        else:
            _put_headers(p, headers)
        self._len = end
        if count == 0:
            self._first_ts = ts
            self._max_ts = ts
        elif ts > self._max_ts:
            self._max_ts = ts
        self._count = count + 1
        return 1

    def build(self, base_offset=0, producer_id=-1, producer_epoch=-1, base_sequence=-1, transactional=False):
        """The batch as bytes, with header and CRC-32C. Repeating a call with the same arguments (a retry)
        returns the same object; other arguments re-patch the header over the same (compressed) records."""
        cdef int64_t offset = _i64(base_offset)
        cdef int64_t pid = _i64(producer_id)
        cdef int16_t epoch = <int16_t>_i64_in(producer_epoch, 16, "producer_epoch")
        cdef int32_t seq = <int32_t>_i64_in(base_sequence, 32, "base_sequence")
        cdef bint txn = True if transactional else False
        if (self._built is not None and self._b_count == self._count and self._b_offset == offset
                and self._b_pid == pid and self._b_epoch == epoch
                and self._b_seq == seq and self._b_txn == txn):
            return self._built
        if self._count == 0:
            raise ValueError("cannot build an empty record batch")
        if txn and pid < 0:
            raise ValueError("a transactional batch needs a producer id")
        cdef object out
        cdef char* p
        cdef Py_ssize_t size
        if self._codec == 0:
            size = self._len
            if self._published:
                # A rebuild with other arguments: the bytes handed out before must not change.
                out = PyBytes_FromStringAndSize(self._buf, size)
            else:
                if self._cap != size:
                    self._resize_private(size)  # shrink in place before handing it out
                out = self._data
                self._published = True
            p = PyBytes_AS_STRING(out)
        elif self._payload_count != self._count:
            out = self._compressed_batch()
            self._payload = out
            self._payload_count = self._count
            size = PyBytes_GET_SIZE(out)
            p = PyBytes_AS_STRING(out)
        else:
            # A rebuild with other arguments (a retry under a new sequence or epoch): the compressed records
            # of the last build, under a new header. The bytes handed out before must not change.
            size = PyBytes_GET_SIZE(self._payload)
            out = PyBytes_FromStringAndSize(NULL, size)
            p = PyBytes_AS_STRING(out)
            memcpy(p + HEADER_SIZE, PyBytes_AS_STRING(self._payload) + HEADER_SIZE, size - HEADER_SIZE)
        # ``out`` is new or our private buffer, seen by no one else yet, so writing into it is safe.
        _put_be64(p, <uint64_t>offset)
        _put_be32(p + 8, <uint32_t>(size - LOG_OVERHEAD))
        _put_be32(p + 12, <uint32_t>-1)             # partitionLeaderEpoch: the broker sets it
        p[16] = 2                                   # magic
        _put_be16(p + ATTRIBUTES_OFFSET, <uint32_t>(self._codec | (ATTR_TRANSACTIONAL if txn else 0)))
        _put_be32(p + 23, <uint32_t>(self._count - 1))
        _put_be64(p + 27, <uint64_t>self._first_ts)
        _put_be64(p + 35, <uint64_t>self._max_ts)
        _put_be64(p + 43, <uint64_t>pid)
        _put_be16(p + 51, <uint32_t><uint16_t>epoch)
        _put_be32(p + 53, <uint32_t>seq)
        _put_be32(p + 57, <uint32_t>self._count)
        # One read-only view straight onto the bytes to checksum, instead of memoryview(out)[21:] (two
        # views and a slice): ``out`` outlives the call.
        cdef uint32_t crc = _crc32c(PyMemoryView_FromMemory(p + ATTRIBUTES_OFFSET, size - ATTRIBUTES_OFFSET,
                                                            PyBUF_READ))
        _put_be32(p + CRC_OFFSET, crc)
        self._built = out
        self._b_count = self._count
        self._b_offset = offset
        self._b_pid = pid
        self._b_epoch = epoch
        self._b_seq = seq
        self._b_txn = txn
        return out


    cdef object _compressed_batch(self):
        """A new bytes object: 61 bytes for the header (left for build() to write), then the records
        compressed as aiokprod.compression.compress(self._codec, records, self._level) would, byte for
        byte. The compressor reads the records in place (no copy of them); a batch that fits one xerial
        chunk (the common case) is framed here, straight into the result."""
        cdef Py_ssize_t n = self._len - HEADER_SIZE, size
        cdef char* p
        cdef Py_buffer pv
        # A view straight onto our buffer. It borrows the memory without holding _data, so it is released
        # before we return: a compressor that kept it could not read freed memory later.
        view = PyMemoryView_FromMemory(self._buf + HEADER_SIZE, n, PyBUF_READ)
        try:
            if self._codec == CODEC_LZ4:
                # compression.compress's call, with the level resolved at __init__, arguments positional.
                payload = _lz4_frame_compress(view, self._compressor, _LZ4_BLOCK_SIZE, _LZ4_CONTENT_CHECKSUM,
                                              _LZ4_BLOCK_CHECKSUM, _LZ4_BLOCK_LINKED, _LZ4_STORE_SIZE)
            elif self._codec == CODEC_SNAPPY and n <= XERIAL_BLOCK:
                # xerial: header | int32 BE chunk size | raw snappy chunk (see compression._xerial_frame).
                chunk = _snappy_compress_raw(view)
                PyObject_GetBuffer(chunk, &pv, PyBUF_SIMPLE)
                try:
                    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + XERIAL_HEADER_LEN + 4 + pv.len)
                    p = PyBytes_AS_STRING(out) + HEADER_SIZE
                    memcpy(p, PyBytes_AS_STRING(_XERIAL_HEADER), XERIAL_HEADER_LEN)
                    _put_be32(p + XERIAL_HEADER_LEN, <uint32_t>pv.len)
                    memcpy(p + XERIAL_HEADER_LEN + 4, pv.buf, pv.len)
                finally:
                    PyBuffer_Release(&pv)
                return out
            elif self._codec == CODEC_ZSTD:
                payload = self._compressor.compress(view)
            else:
                payload = compress(self._codec, view, self._level)
        finally:
            view.release()
        if not PyBytes_CheckExact(payload):  # each compressor returns bytes; anything else is copied once
            payload = bytes(payload)
        size = HEADER_SIZE + PyBytes_GET_SIZE(payload)
        out = PyBytes_FromStringAndSize(NULL, size)
        memcpy(PyBytes_AS_STRING(out) + HEADER_SIZE, PyBytes_AS_STRING(payload), size - HEADER_SIZE)
        return out


cdef object _builder_append(RecordBatchBuilder self, object timestamp_ms, object key, object value,
                            object headers):
    """RecordBatchBuilder.append, the arguments already bound (see aiokprod_append_fastcall)."""
    # Fast path (the producer's common case): bytes or None fields, no headers; read in place, no
    # buffer views to release, no Python objects made. Everything else is in _builder_append_general,
    # so this function needs no cleanup code of its own.
    cdef const char* kp = NULL
    cdef const char* vp = NULL
    cdef Py_ssize_t klen = -1, vlen = -1
    if headers is not None:
        return _builder_append_general(self, timestamp_ms, key, value, headers)
    if key is not None:
        if not PyBytes_CheckExact(key):
            return _builder_append_general(self, timestamp_ms, key, value, headers)
        kp = PyBytes_AS_STRING(key)
        klen = PyBytes_GET_SIZE(key)
    if value is not None:
        if not PyBytes_CheckExact(value):
            return _builder_append_general(self, timestamp_ms, key, value, headers)
        vp = PyBytes_AS_STRING(value)
        vlen = PyBytes_GET_SIZE(value)
    return True if self._append(_i64(timestamp_ms), kp, klen, vp, vlen, None) else False


cdef object _builder_append_general(RecordBatchBuilder self, object timestamp_ms, object key, object value,
                                    object headers):
    """append with bytes-like (buffer protocol) fields and/or headers."""
    cdef int64_t ts = _i64(timestamp_ms)
    cdef Py_buffer kview, vview
    cdef const char* kp = NULL
    cdef const char* vp = NULL
    cdef Py_ssize_t klen = -1, vlen = -1
    cdef bint kheld = False, vheld = False
    cdef int r
    if key is not None:
        if PyBytes_CheckExact(key):
            kp = PyBytes_AS_STRING(key)
            klen = PyBytes_GET_SIZE(key)
        else:
            _get_view(key, &kview, "key")
            kheld = True
            kp = <const char*>kview.buf
            klen = kview.len
    try:
        if value is not None:
            if PyBytes_CheckExact(value):
                vp = PyBytes_AS_STRING(value)
                vlen = PyBytes_GET_SIZE(value)
            else:
                _get_view(value, &vview, "value")
                vheld = True
                vp = <const char*>vview.buf
                vlen = vview.len
        if headers is not None:
            headers = _normalize_headers(headers)
            if len(headers) == 0:
                headers = None
        r = self._append(ts, kp, klen, vp, vlen, headers)
    finally:
        if kheld:
            PyBuffer_Release(&kview)
        if vheld:
            PyBuffer_Release(&vview)
    return True if r else False


# --- RecordBatchBuilder.append's entry point ----------------------------------------------------------
# append is called once per record, and a Cython def method costs ~8 ns per call more than a plain
# METH_FASTCALL C function (measured: 31 vs 23.5 ns for the bench loop around a method that does
# nothing): its generated parser takes a new reference to each argument and releases them all again,
# and with keywords allowed it also builds the keyword-names table on every call. The loop below is
# that C function: positional calls go straight to _builder_append with borrowed arguments; anything
# else (keywords, a wrong count) is handed to the Cython wrapper, which binds or rejects it as before.
cdef extern from *:
    """
    typedef PyObject *(*aiokprod_append_impl_t)(PyObject *, PyObject *, PyObject *, PyObject *, PyObject *);
    static aiokprod_append_impl_t aiokprod_append_impl = NULL;
    static PyObject *aiokprod_append_generic = NULL;  /* Cython's method descriptor for append */

    static PyObject *aiokprod_append_fastcall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                              PyObject *kwnames) {
        PyObject *bound, *result;
        if (kwnames == NULL) {
            if (nargs == 4)
                return aiokprod_append_impl(self, args[0], args[1], args[2], args[3]);
            if (nargs == 3)
                return aiokprod_append_impl(self, args[0], args[1], args[2], Py_None);
        }
        bound = Py_TYPE(aiokprod_append_generic)->tp_descr_get(
            aiokprod_append_generic, self, (PyObject *)Py_TYPE(self));
        if (bound == NULL)
            return NULL;
        result = PyObject_Vectorcall(bound, args, (size_t)nargs, kwnames);
        Py_DECREF(bound);
        return result;
    }

    static PyMethodDef aiokprod_append_def = {
        "append", (PyCFunction)(void (*)(void))aiokprod_append_fastcall, METH_FASTCALL | METH_KEYWORDS, NULL};

    /* Replace the type's "append" (Cython's descriptor, kept for the slow path and its docstring) with
       one for aiokprod_append_fastcall. The type is immutable to Python code, so this writes its dict
       and invalidates the method cache, as Cython's own __reduce__ setup does. */
    static int aiokprod_install_append(PyTypeObject *type, aiokprod_append_impl_t impl) {
        PyObject *generic, *descr;
        int failed;
        generic = PyDict_GetItemString(type->tp_dict, "append");
        if (generic == NULL || !PyObject_TypeCheck(generic, &PyMethodDescr_Type)) {
            PyErr_SetString(PyExc_RuntimeError, "RecordBatchBuilder.append is not a method descriptor");
            return -1;
        }
        Py_INCREF(generic);
        aiokprod_append_generic = generic;
        aiokprod_append_impl = impl;
        aiokprod_append_def.ml_doc = ((PyMethodDescrObject *)generic)->d_method->ml_doc;
        descr = PyDescr_NewMethod(type, &aiokprod_append_def);
        if (descr == NULL)
            return -1;
        failed = PyDict_SetItemString(type->tp_dict, "append", descr);
        Py_DECREF(descr);
        PyType_Modified(type);
        return failed;
    }
    """
    ctypedef object (*aiokprod_append_impl_t)(object, object, object, object, object)
    int aiokprod_install_append(type cls, aiokprod_append_impl_t impl) except -1


aiokprod_install_append(RecordBatchBuilder, <aiokprod_append_impl_t>_builder_append)
