"""Where a CSV quote is left open at the end of its line. One function, run as plain
Python on a few kilobytes and compiled by numba for anything larger (the same source,
so the two cannot disagree)."""

from __future__ import annotations

import functools

QUOTE_KERNEL_MIN_BYTES = 1 << 16  # below this, plain Python beats loading numba


def open_quote_line(buf) -> int:
    """Offset of the first CSV line with a quote still open at its end, or -1. A quote
    opens a field only at its start ("" inside is a quote), as pyarrow reads CSV.
    `buf`: bytes, or a uint8 array of them."""
    line_start, field_start, quoted, i = 0, True, False, 0
    while i < len(buf):
        b = buf[i]
        if quoted:
            if b == 34:  # "
                if i + 1 < len(buf) and buf[i + 1] == 34:
                    i += 1
                else:
                    quoted = False
            elif b == 10:  # \n
                return line_start
        elif b == 10:
            line_start, field_start = i + 1, True
        elif b == 44:  # ,
            field_start = True
        else:
            quoted, field_start = b == 34 and field_start, False
        i += 1
    return line_start if quoted else -1


@functools.cache
def compiled():
    """open_quote_line compiled (numba is imported here, not before it is needed)."""
    import numba

    return numba.njit(cache=True, nogil=True)(open_quote_line)
