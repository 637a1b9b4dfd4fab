# The Java client's murmur2 (seed 0x9747b28c), header-only so that every compiled module that partitions
# (codec's murmur2/key_partition, appender's send() fast path) inlines the one implementation.
from libc.stdint cimport int32_t, uint32_t


cdef inline int32_t murmur2_bytes(const unsigned char* data, Py_ssize_t length) noexcept nogil:
    # Java's murmur2 works on signed ints with wrapping multiplication and >>>; uint32 arithmetic gives
    # the same bits, and the final cast gives Java's signed result.
    cdef uint32_t m = 0x5BD1E995U
    cdef uint32_t h = (<uint32_t>0x9747B28CU) ^ <uint32_t>length
    cdef uint32_t k
    cdef Py_ssize_t i, end4 = length & ~(<Py_ssize_t>3)
    for i in range(0, end4, 4):
        k = (<uint32_t>data[i] | (<uint32_t>data[i + 1] << 8) | (<uint32_t>data[i + 2] << 16)
             | (<uint32_t>data[i + 3] << 24))
        k *= m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
    cdef Py_ssize_t rest = length & 3
    if rest == 3:
        h ^= <uint32_t>data[end4 + 2] << 16
    if rest >= 2:
        h ^= <uint32_t>data[end4 + 1] << 8
    if rest >= 1:
        h ^= <uint32_t>data[end4]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return <int32_t>h
