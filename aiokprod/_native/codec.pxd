# The compiled RecordBatchBuilder's C layout, so that other compiled modules can read it without a Python
# call: send()'s fast path (appender.pyx) reads ``_len`` before and after an append to learn how many bytes
# the record took in the batch (KIP-794's sticky partitioner counts exactly those). How the buffer is used is
# described in codec.pyx, above RecordBatchBuilder.__init__.
cimport cython
from libc.stdint cimport int16_t, int32_t, int64_t


@cython.final
cdef class RecordBatchBuilder:
    cdef object _data
    cdef char* _buf            # PyBytes_AS_STRING(_data)
    cdef bint _published
    cdef Py_ssize_t _len       # bytes written: the header's 61 + the records (what size_in_bytes says)
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _batch_size
    cdef int _codec
    cdef object _level
    cdef int32_t _count
    cdef int64_t _first_ts
    cdef int64_t _max_ts
    cdef object _compressor    # zstd: the shared ZstdCompressor for _level; lz4: (mode, store_size, accel, hc)
    cdef object _payload       # a batch built with _payload_count records: its bytes after the header are
    cdef int32_t _payload_count  # the compressed records (what a rebuild with other arguments reuses)
    cdef object _built         # last build() result, valid for the _b_* arguments and _b_count records
    cdef int64_t _b_offset
    cdef int64_t _b_pid
    cdef int16_t _b_epoch
    cdef int32_t _b_seq
    cdef bint _b_txn
    cdef int32_t _b_count

    cdef int _grow(self, Py_ssize_t needed) except -1
    cdef int _resize_private(self, Py_ssize_t size) except -1
    cdef object _compressed_batch(self)
    cdef int _append(self, int64_t ts, const char* kp, Py_ssize_t klen, const char* vp, Py_ssize_t vlen,
                     object headers) except -1
