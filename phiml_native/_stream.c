/* Gathers runs of consecutive rows of a table into one output buffer: with streaming stores, or with memcpy except
 * at the distances where memcpy is slow.
 *
 * An ordinary store first reads the destination's cache line from memory (read for ownership), so a copy moves each
 * byte over the memory bus three times; a streaming (non-temporal) store writes whole lines past the cache and moves
 * it twice. glibc's memcpy streams only copies larger than 3/4 of the shared cache size it finds, and a VM that
 * reports the host's cache (256 MiB on the 2-core AMD EPYC VM this was written on) never gets there.
 *
 * glibc's memcpy copies blocks of ~2 KB and more with `rep movsb`, which ran 10-12x slower on that CPU whenever the
 * destination lay 1-31 bytes past the source modulo 4096. Such runs are streamed instead, which is not affected.
 * See phiml_native/gather.py and phiml_native/aligned.py for where this is used and the figures.
 *
 * gather_runs(out, table, starts, row_bytes, run_rows, stream): for each i, copies rows starts[i] .. starts[i] +
 * run_rows - 1 of `table` (rows of `row_bytes` bytes) to out[i * run_rows * row_bytes ...], streamed if `stream`.
 * `starts` is a buffer of int64. The GIL is released while copying, so several threads can share a gather. Off
 * x86-64 it copies with memcpy only. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#include <xmmintrin.h>
#define STREAMING 1
#else
#define STREAMING 0
#endif

static void copy_streaming(char *dst, const char *src, size_t n)
{
#if STREAMING
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15; /* streaming stores need 16-byte aligned destinations */
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    for (; n >= 64; n -= 64, dst += 64, src += 64) {
        _mm_prefetch(src + 512, _MM_HINT_NTA); /* the next lines, not kept in the cache */
        __m128i a = _mm_loadu_si128((const __m128i *)src);
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
#endif
    memcpy(dst, src, n);
}

static PyObject *gather_runs(PyObject *self, PyObject *args)
{
    Py_buffer out, table, starts;
    Py_ssize_t row_bytes, run_rows;
    int stream;
    if (!PyArg_ParseTuple(args, "w*y*y*nnp", &out, &table, &starts, &row_bytes, &run_rows, &stream))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = starts.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t run_bytes = row_bytes * run_rows;
    if (row_bytes < 0 || run_rows < 0 || starts.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "gather_runs: row_bytes and run_rows must be >= 0, starts a buffer of int64");
        goto done;
    }
    if (row_bytes && run_rows && out.len / run_bytes < count) {
        PyErr_Format(PyExc_ValueError, "gather_runs: out holds %zd bytes, %zd runs of %zd bytes need more",
                     out.len, count, run_bytes);
        goto done;
    }
    const int64_t *first = (const int64_t *)starts.buf;
    Py_ssize_t rows = row_bytes ? table.len / row_bytes : 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (first[i] < 0 || first[i] > rows - run_rows) {
            PyErr_Format(PyExc_IndexError, "gather_runs: run %zd starts at row %lld, the table has rows 0..%zd and "
                         "runs are %zd rows long", i, (long long)first[i], rows - 1, run_rows);
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        char *dst = (char *)out.buf + i * run_bytes;
        const char *src = (const char *)table.buf + first[i] * row_bytes;
        size_t distance = ((uintptr_t)dst - (uintptr_t)src) & 4095; /* where rep movsb ran 10-12x slower: 1-31 */
        if (stream || (distance > 0 && distance < 64))
            copy_streaming(dst, src, (size_t)run_bytes);
        else
            memcpy(dst, src, (size_t)run_bytes);
    }
#if STREAMING
    _mm_sfence(); /* streamed lines are visible to every thread before this call returns */
#endif
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&table);
    PyBuffer_Release(&starts);
    return result;
}

static PyMethodDef methods[] = {
    {"gather_runs", gather_runs, METH_VARARGS,
     "gather_runs(out, table, starts, row_bytes, run_rows, stream): copies rows starts[i] .. starts[i] + run_rows - 1 "
     "of table to the i-th run of out (starts: int64 buffer), with streaming stores if stream."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stream", NULL, -1, methods};

PyMODINIT_FUNC PyInit__stream(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "STREAMING", STREAMING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
