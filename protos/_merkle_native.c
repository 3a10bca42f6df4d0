/* RFC 6962 leaf hashes and roots for many leaves per call (protos/merkle.py uses it when built).
 *
 * The hub hashes every reading it receives (about 1.2 kB each) and every node above them.
 * From Python each SHA-256 costs about 1 us of call overhead on top of the hashing itself
 * (OpenSSL 3 sets up a digest context per call); here one call hashes a whole batch with
 * OpenSSL's SHA256_Init/Update/Final, which use the CPU's SHA instructions where present
 * and, unlike the one-shot SHA256() of OpenSSL 3, fetch no algorithm per call. The
 * Python code in protos/merkle.py stays the definition: tests hold this module to it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init/Update/Final: deprecated in OpenSSL 3, the fastest still */
#include <openssl/sha.h>

#define HASH 32

/* spliced_leaf_hashes(rows, width, cut, insert) -> bytes: the leaf hash of each `width`-byte
 * row with `insert` put back at offset `cut`: SHA-256(0x00 || row[:cut] || insert || row[cut:]).
 * Packed readings are such rows (their names field cut out), so no spliced copy is built. */
static PyObject *spliced_leaf_hashes(PyObject *self, PyObject *args) {
    Py_buffer rows, insert;
    Py_ssize_t width, cut;
    if (!PyArg_ParseTuple(args, "y*nny*", &rows, &width, &cut, &insert))
        return NULL;
    if (width <= 0 || rows.len % width != 0 || cut < 0 || cut > width) {
        PyErr_Format(PyExc_ValueError, "spliced_leaf_hashes: %zd bytes are not rows of %zd bytes cut at %zd",
                     rows.len, width, cut);
        PyBuffer_Release(&rows);
        PyBuffer_Release(&insert);
        return NULL;
    }
    Py_ssize_t n = rows.len / width;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * HASH);
    if (out != NULL) {
        const unsigned char *src = rows.buf;
        const unsigned char prefix = 0x00;
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const unsigned char *row = src + i * width;
            SHA256_CTX ctx;
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, &prefix, 1);
            SHA256_Update(&ctx, row, (size_t)cut);
            SHA256_Update(&ctx, insert.buf, (size_t)insert.len);
            SHA256_Update(&ctx, row + cut, (size_t)(width - cut));
            SHA256_Final(dst + i * HASH, &ctx);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&rows);
    PyBuffer_Release(&insert);
    return out;
}

/* root(hashes) -> bytes: the RFC 6962 root over n >= 1 leaf hashes given as n * 32 bytes.
 * Level by level: neighbours paired, an odd last node carried up unchanged. */
static PyObject *root(PyObject *self, PyObject *args) {
    Py_buffer hashes;
    if (!PyArg_ParseTuple(args, "y*", &hashes))
        return NULL;
    if (hashes.len == 0 || hashes.len % HASH != 0) {
        PyErr_Format(PyExc_ValueError, "root: %zd bytes are not one or more 32-byte hashes", hashes.len);
        PyBuffer_Release(&hashes);
        return NULL;
    }
    Py_ssize_t n = hashes.len / HASH;
    unsigned char *level = PyMem_Malloc((size_t)hashes.len);
    if (level == NULL) {
        PyBuffer_Release(&hashes);
        return PyErr_NoMemory();
    }
    memcpy(level, hashes.buf, (size_t)hashes.len);
    PyBuffer_Release(&hashes);
    Py_BEGIN_ALLOW_THREADS
    /* Every node hash starts with 0x01: absorb it once, copy the state per node. */
    const unsigned char prefix = 0x01;
    SHA256_CTX node_prefix;
    SHA256_Init(&node_prefix);
    SHA256_Update(&node_prefix, &prefix, 1);
    while (n > 1) {
        Py_ssize_t pairs = n / 2;
        for (Py_ssize_t j = 0; j < pairs; j++) {
            SHA256_CTX ctx = node_prefix;
            SHA256_Update(&ctx, level + 2 * j * HASH, 2 * HASH);
            SHA256_Final(level + j * HASH, &ctx); /* j * HASH <= 2 * j * HASH: read before written */
        }
        if (n & 1)
            memmove(level + pairs * HASH, level + (n - 1) * HASH, HASH);
        n = pairs + (n & 1);
    }
    Py_END_ALLOW_THREADS
    PyObject *out = PyBytes_FromStringAndSize((const char *)level, HASH);
    PyMem_Free(level);
    return out;
}

static PyMethodDef methods[] = {
    {"spliced_leaf_hashes", spliced_leaf_hashes, METH_VARARGS,
     "Leaf hash of each fixed-size row with a common insert put back at one offset."},
    {"root", root, METH_VARARGS, "RFC 6962 root over concatenated 32-byte leaf hashes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_merkle_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__merkle_native(void) { return PyModule_Create(&module); }
