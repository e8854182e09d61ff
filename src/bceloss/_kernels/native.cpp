// bceloss._kernels._native: the fused kernels' entry points for Python (see launch.py).
//
// Arrays arrive through the buffer protocol, flat and C-contiguous, float16 and bfloat16 as
// their bits (uint16 and int16): the planning (plan.py) has laid them out. Every length and
// type is checked here again, so that no mistake above can make the kernels read or write
// outside an array.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "launch.hpp"
#include "loops.hpp"
#include "torch_kernel.hpp"

namespace {

using bceloss::Storage;

// A buffer held for the length of a call (released on every path out).
struct Held {
    Py_buffer view{};
    bool held = false;
    Held() = default;
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
    ~Held() {
        if (held) PyBuffer_Release(&view);
    }
    int64_t size() const { return held ? static_cast<int64_t>(view.len / view.itemsize) : 0; }
};

bool storage_of_format(const Py_buffer& v, Storage* type) {
    const char* f = v.format == nullptr ? "B" : v.format;
    // native byte order only (the planning makes every array native)
    const bool little = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    if (*f == '@' || *f == '=' || (*f == '<' && little) || ((*f == '>' || *f == '!') && !little)) {
        ++f;
    }
    if (f[0] == '\0' || f[1] != '\0') return false;
    const Py_ssize_t size = v.itemsize;
    switch (f[0]) {
        case 'f':
            *type = Storage::f32;
            return size == 4;
        case 'd':
            *type = Storage::f64;
            return size == 8;
        case 'e':
        case 'H':
            *type = Storage::f16;
            return size == 2;
        case 'h':
            *type = Storage::bf16;
            return size == 2;
        case '?':
            *type = Storage::b8;
            return size == 1;
        case 'b':
            *type = Storage::i8;
            return size == 1;
        case 'B':
            *type = Storage::u8;
            return size == 1;
        case 'i':
        case 'l':
        case 'q':
            *type = size == 4 ? Storage::i32 : Storage::i64;
            return size == 4 || size == 8;
        case 'I':
        case 'L':
        case 'Q':
            *type = size == 4 ? Storage::u32 : Storage::u64;
            return size == 4 || size == 8;
        default:
            return false;
    }
}

bool fail(const char* name, const char* problem) {
    PyErr_Format(PyExc_ValueError, "bceloss kernel: %s %s", name, problem);
    return false;
}

// obj (None for absent) held as a flat C-contiguous buffer.
bool hold(PyObject* obj, Held& h, bool writable, const char* name) {
    if (obj == Py_None) return true;
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &h.view, flags) != 0) return false;
    h.held = true;
    if (h.view.ndim > 1) return fail(name, "is not flat");
    if (h.view.itemsize < 1) return fail(name, "has elements of no size");
    return true;
}

bool operand(PyObject* obj, Held& h, bceloss::Operand& a, const char* name, int64_t n,
             bool periodic) {
    a = bceloss::Operand{nullptr, Storage::f32, 1};
    if (!hold(obj, h, false, name)) return false;
    if (!h.held) return true;
    if (!storage_of_format(h.view, &a.type)) return fail(name, "has a type the kernel cannot read");
    a.data = h.view.buf;
    a.period = h.size();
    if (periodic ? a.period < 1 : a.period != n) return fail(name, "has the wrong length");
    return true;
}

bool output(PyObject* obj, Held& h, bceloss::Output& o, const char* name, int64_t n) {
    o = bceloss::Output{nullptr, Storage::f32};
    if (!hold(obj, h, true, name)) return false;
    if (!h.held) return true;
    if (!storage_of_format(h.view, &o.type) || static_cast<int>(o.type) > 3) {
        return fail(name, "is not floating");
    }
    if (h.size() != n) return fail(name, "has the wrong length");
    o.data = h.view.buf;
    return true;
}

bool sums(PyObject* obj, Held& h, double** out, const char* name, int64_t blocks) {
    *out = nullptr;
    if (!hold(obj, h, true, name)) return false;
    if (!h.held) return true;
    Storage type;
    if (!storage_of_format(h.view, &type) || type != Storage::f64 || h.size() != blocks) {
        return fail(name, "must be float64, one element a block");
    }
    *out = static_cast<double*>(h.view.buf);
    return true;
}

const char run_doc[] =
    "run(kind, compute64, x, y, w, p, keep, wd, out, gx, gy, sums, wsums, starts, ignore,\n"
    "    smooth_keep, smooth_add, has_alpha, alpha, gamma, divisor, team, chunks)\n"
    "--\n\n"
    "One pass of the fused kernel over a planned call (see bceloss._kernels.launch).";

PyObject* run(PyObject*, PyObject* args) {
    int kind, compute64, has_alpha, team;
    long long chunks;
    PyObject *x, *y, *w, *p, *keep, *wd, *out, *gx, *gy, *bsums, *wsums, *starts;
    double ignore, smooth_keep, smooth_add, alpha, gamma, divisor;
    if (!PyArg_ParseTuple(args, "ipOOOOOOOOOOOOdddpdddiL", &kind, &compute64, &x, &y, &w, &p, &keep,
                          &wd, &out, &gx, &gy, &bsums, &wsums, &starts, &ignore, &smooth_keep,
                          &smooth_add, &has_alpha, &alpha, &gamma, &divisor, &team, &chunks)) {
        return nullptr;
    }
    if (kind < 0 || kind > 2 || team < 1 || chunks < 1) {
        PyErr_SetString(PyExc_ValueError, "bceloss kernel: bad kind, team or chunks");
        return nullptr;
    }
    Held hs, hx, hy, hw, hp, hk, hwd, hout, hgx, hgy, hsums, hwsums;
    bceloss::Arguments a{};
    a.kind = kind;
    a.team = team;
    a.chunks = chunks;
    a.ignore = ignore;
    a.smooth_keep = smooth_keep;
    a.smooth_add = smooth_add;
    a.has_alpha = has_alpha;
    a.alpha = alpha;
    a.gamma = gamma;
    a.divisor = divisor;
    if (!hold(starts, hs, false, "starts")) return nullptr;
    Storage st;
    if (!hs.held || !storage_of_format(hs.view, &st) || st != Storage::i64 || hs.size() < 2) {
        fail("starts", "must be int64, blocks + 1 of them");
        return nullptr;
    }
    // a copy, checked: the caller's array could change (or be an output) while the GIL is out
    std::vector<int64_t> starts_copy(static_cast<const int64_t*>(hs.view.buf),
                                     static_cast<const int64_t*>(hs.view.buf) + hs.size());
    a.starts = starts_copy.data();
    a.blocks = hs.size() - 1;
    const int64_t n = a.starts[a.blocks];
    for (int64_t b = 0; b < a.blocks; ++b) {
        if (a.starts[b] > a.starts[b + 1] || a.starts[b] < 0) {
            fail("starts", "must increase from 0");
            return nullptr;
        }
    }
    if (a.chunks > a.blocks) a.chunks = a.blocks;
    if (!operand(x, hx, a.x, "x", n, false) || !operand(y, hy, a.y, "y", n, false) ||
        !operand(w, hw, a.w, "w", n, true) || !operand(p, hp, a.p, "p", n, true) ||
        !operand(wd, hwd, a.wd, "wd", n, true) || !hold(keep, hk, false, "keep") ||
        !output(out, hout, a.out, "out", n) || !output(gx, hgx, a.gx, "gx", n) ||
        !output(gy, hgy, a.gy, "gy", n) || !sums(bsums, hsums, &a.sums, "sums", a.blocks) ||
        !sums(wsums, hwsums, &a.wsums, "wsums", a.blocks)) {
        return nullptr;
    }
    if (a.x.data == nullptr || a.y.data == nullptr) {
        fail("x and y", "are required");
        return nullptr;
    }
    if (a.wsums != nullptr && a.wd.data == nullptr) {
        fail("wd", "is required where wsums is wanted");
        return nullptr;
    }
    if (hk.held && (hk.size() != n || hk.view.itemsize != 1)) {
        fail("keep", "must hold a byte an element");
        return nullptr;
    }
    a.keep = hk.held ? static_cast<const uint8_t*>(hk.view.buf) : nullptr;
    a.grad = a.gy.data != nullptr ? 2 : (a.gx.data != nullptr ? 1 : 0);
    Py_BEGIN_ALLOW_THREADS
        bceloss::launch(a, compute64 != 0);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

const char kept_blocks_doc[] =
    "kept_blocks(keep, starts)\n--\n\n"
    "Where each block of BLOCK kept elements of the byte mask `keep` begins, into `starts`\n"
    "(int64, len(keep) // BLOCK + 2 of them): returns (blocks, kept).";

PyObject* kept_blocks(PyObject*, PyObject* args) {
    PyObject *keep, *starts;
    if (!PyArg_ParseTuple(args, "OO", &keep, &starts)) return nullptr;
    Held hk, hs;
    if (!hold(keep, hk, false, "keep") || !hold(starts, hs, true, "starts")) return nullptr;
    Storage st;
    const int64_t n = hk.size();
    if (!hk.held || hk.view.itemsize != 1 || n < 1) {
        fail("keep", "must hold a byte an element, at least one");
        return nullptr;
    }
    if (!hs.held || !storage_of_format(hs.view, &st) || st != Storage::i64 ||
        hs.size() < n / bceloss::BLOCK + 2) {
        fail("starts", "must be int64, len(keep) // BLOCK + 2 of them");
        return nullptr;
    }
    const char* k0 = static_cast<const char*>(hk.view.buf);
    const char* s0 = static_cast<const char*>(hs.view.buf);
    if (k0 < s0 + hs.view.len && s0 < k0 + hk.view.len) {
        fail("keep and starts", "overlap");
        return nullptr;
    }
    int64_t kept = 0, blocks = 0;
    Py_BEGIN_ALLOW_THREADS
        blocks = bceloss::kept_blocks(static_cast<const uint8_t*>(hk.view.buf), n,
                                      static_cast<int64_t*>(hs.view.buf), &kept);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("LL", static_cast<long long>(blocks), static_cast<long long>(kept));
}

// The elementary functions of fastmath.hpp, one array at a time: for the tests, which hold
// each to the exact value (the kernels inline them; nothing else calls this). Each name with
// what it needs besides `a` and `out`.
enum class Elementary {
    exp_neg,
    log1p_unit,
    log,
    log1p_neg,
    expm1_from_parts,
    exp_neg_parts,
    log_parts,
    ldexp_neg,
    scaled_down_by_bits
};

struct ElementaryName {
    const char* name;
    Elementary fn;
    bool out2, j;
};

constexpr ElementaryName ELEMENTARY[] = {
    {"exp_neg", Elementary::exp_neg, false, false},
    {"log1p_unit", Elementary::log1p_unit, false, false},
    {"log", Elementary::log, false, false},
    {"log1p_neg", Elementary::log1p_neg, false, false},
    {"expm1_from_parts", Elementary::expm1_from_parts, false, false},
    {"exp_neg_parts", Elementary::exp_neg_parts, true, false},
    {"log_parts", Elementary::log_parts, true, false},
    {"ldexp_neg", Elementary::ldexp_neg, false, true},
    {"scaled_down_by_bits", Elementary::scaled_down_by_bits, false, true},
};

template <class F>
void fastmath_apply(Elementary fn, int64_t n, const F* a, F* out, F* out2, const int64_t* j) {
    using Int = typename bceloss::Constants<F>::Int;
    using bceloss::Constants;
    for (int64_t i = 0; i < n; ++i) {
        const F v = a[i];
        // exp_neg_parts up to its clamp, as the focal loss calls it
        const F t = v > Constants<F>::parts_arg_max ? Constants<F>::parts_arg_max : v;
        switch (fn) {
            case Elementary::exp_neg:
                out[i] = bceloss::exp_neg(v);
                break;
            case Elementary::log1p_unit:
                out[i] = bceloss::log1p_unit(v);
                break;
            case Elementary::log:
                out[i] = bceloss::log(v);
                break;
            case Elementary::log1p_neg:
                out[i] = bceloss::log1p_neg(v);
                break;
            case Elementary::expm1_from_parts: {
                const auto parts = bceloss::exp_neg_parts(t);
                out[i] = bceloss::expm1_from_parts(parts.pm1, parts.n);
                break;
            }
            case Elementary::exp_neg_parts: {  // 2^-n (1 + P), scaled once, and P
                const auto parts = bceloss::exp_neg_parts(t);
                out[i] = bceloss::ldexp_neg(Constants<F>::one + parts.pm1, parts.n);
                out2[i] = parts.pm1;
                break;
            }
            case Elementary::log_parts: {
                const auto parts = bceloss::log_parts(v);
                out[i] = parts.k;
                out2[i] = parts.f;
                break;
            }
            case Elementary::ldexp_neg:
                out[i] = bceloss::ldexp_neg(v, static_cast<Int>(j[i]));
                break;
            case Elementary::scaled_down_by_bits:
                out[i] = bceloss::scaled_down_by_bits(v, static_cast<Int>(j[i]));
                break;
        }
    }
}

const char fastmath_doc[] =
    "fastmath(name, a, out, out2, j)\n--\n\n"
    "out[i] (and out2[i]) = the function `name` of fastmath.hpp at a[i] (and j[i], int64),\n"
    "for float32 or float64 arrays: for the tests.";

PyObject* fastmath(PyObject*, PyObject* args) {
    const char* name;
    PyObject *a, *out, *out2, *j;
    if (!PyArg_ParseTuple(args, "sOOOO", &name, &a, &out, &out2, &j)) return nullptr;
    Held ha, ho, ho2, hj;
    if (!hold(a, ha, false, "a") || !hold(out, ho, true, "out") || !hold(out2, ho2, true, "out2") ||
        !hold(j, hj, false, "j")) {
        return nullptr;
    }
    Storage ta, to;
    const int64_t n = ha.size();
    if (!ha.held || !ho.held || !storage_of_format(ha.view, &ta) ||
        !storage_of_format(ho.view, &to) || ta != to ||
        (ta != Storage::f32 && ta != Storage::f64) || ho.size() != n ||
        (ho2.held && ho2.size() != n) || (hj.held && hj.size() != n)) {
        fail("a, out, out2 and j", "must be float32 or float64 arrays of one length (j int64)");
        return nullptr;
    }
    Storage t2 = ta, tj = Storage::i64;
    if ((ho2.held && (!storage_of_format(ho2.view, &t2) || t2 != ta)) ||
        (hj.held && (!storage_of_format(hj.view, &tj) || tj != Storage::i64))) {
        fail("out2 and j", "must have a's type and int64");
        return nullptr;
    }
    const ElementaryName* found = nullptr;
    for (const ElementaryName& e : ELEMENTARY) {
        if (std::strcmp(e.name, name) == 0) found = &e;
    }
    if (found == nullptr) {
        PyErr_Format(PyExc_ValueError, "bceloss kernel: no function %s in fastmath.hpp", name);
        return nullptr;
    }
    if ((found->out2 && !ho2.held) || (found->j && !hj.held)) {
        fail(name, "needs out2 (exp_neg_parts, log_parts) or j (ldexp_neg, scaled_down_by_bits)");
        return nullptr;
    }
    if (ta == Storage::f32) {
        fastmath_apply<float>(found->fn, n, static_cast<const float*>(ha.view.buf),
                              static_cast<float*>(ho.view.buf),
                              ho2.held ? static_cast<float*>(ho2.view.buf) : nullptr,
                              hj.held ? static_cast<const int64_t*>(hj.view.buf) : nullptr);
    } else {
        fastmath_apply<double>(found->fn, n, static_cast<const double*>(ha.view.buf),
                               static_cast<double*>(ho.view.buf),
                               ho2.held ? static_cast<double*>(ho2.view.buf) : nullptr,
                               hj.held ? static_cast<const int64_t*>(hj.view.buf) : nullptr);
    }
    Py_RETURN_NONE;
}

const char encode_doc[] =
    "encode(a, out)\n--\n\n"
    "out = a (float32 or float64) stored as the kernels store an output of out's type\n"
    "(float16 as uint16 bits, bfloat16 as int16 bits): for the tests.";

PyObject* encode(PyObject*, PyObject* args) {
    PyObject *a, *out;
    if (!PyArg_ParseTuple(args, "OO", &a, &out)) return nullptr;
    Held ha, ho;
    bceloss::Output o;
    if (!hold(a, ha, false, "a") || !output(out, ho, o, "out", ha.size())) return nullptr;
    Storage ta;
    if (!ha.held || !ho.held || !storage_of_format(ha.view, &ta) ||
        (ta != Storage::f32 && ta != Storage::f64)) {
        fail("a", "must be a float32 or float64 array");
        return nullptr;
    }
    if (ta == Storage::f32) {
        bceloss::encode<float>(o, 0, ha.size(), static_cast<const float*>(ha.view.buf));
    } else {
        bceloss::encode<double>(o, 0, ha.size(), static_cast<const double*>(ha.view.buf));
    }
    Py_RETURN_NONE;
}

const char in_unit_range_doc[] =
    "in_unit_range(a)\n--\n\n"
    "Whether the values of a float32 or float64 array in C order all lie in [0, 1] or are\n"
    "NaN (BCE's check of probabilities); None for another array.";

PyObject* in_unit_range(PyObject*, PyObject* args) {
    PyObject* a;
    if (!PyArg_ParseTuple(args, "O", &a)) return nullptr;
    Py_buffer view;
    if (PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();  // not a C-ordered buffer: the caller checks it otherwise
        Py_RETURN_NONE;
    }
    Storage type;
    const bool known =
        storage_of_format(view, &type) && (type == Storage::f32 || type == Storage::f64);
    bool inside = true;
    if (known && type == Storage::f32) {
        inside = bceloss::all_in_unit_range(static_cast<const float*>(view.buf), view.len / 4);
    } else if (known) {
        inside = bceloss::all_in_unit_range(static_cast<const double*>(view.buf), view.len / 8);
    }
    PyBuffer_Release(&view);
    if (!known) Py_RETURN_NONE;
    return PyBool_FromLong(inside);
}

// An entry point with C++ exceptions (no memory for a copy, say) turned into Python's; the
// code that runs without the GIL throws none.
template <PyObject* (*Entry)(PyObject*, PyObject*)>
PyObject* guarded(PyObject* self, PyObject* args) {
    try {
        return Entry(self, args);
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_Format(PyExc_RuntimeError, "bceloss kernel: %s", e.what());
        return nullptr;
    }
}

PyMethodDef methods[] = {
    {"run", guarded<run>, METH_VARARGS, run_doc},
    {"kept_blocks", guarded<kept_blocks>, METH_VARARGS, kept_blocks_doc},
    {"fastmath", guarded<fastmath>, METH_VARARGS, fastmath_doc},
    {"encode", guarded<encode>, METH_VARARGS, encode_doc},
    {"in_unit_range", guarded<in_unit_range>, METH_VARARGS, in_unit_range_doc},
    {"torch_install", guarded<bceloss::torch_install>, METH_VARARGS,
     "torch_install(addresses, fallbacks, codes, cpu, team=None)\n--\n\nInstall the PyTorch "
     "operators' C kernels (see torch_kernel.hpp); returns their addresses."},
    {"torch_remember", guarded<bceloss::torch_remember>, METH_VARARGS,
     "torch_remember(kind, compute64, starts, ignore, smooth_keep, smooth_add, has_alpha, alpha,\n"
     "    gamma, divisor, sum, denominator, out_dtype, loss)\n--\n\nThe constants of the form "
     "the C kernel falls back for, and its loss; whether it keeps them."},
    {"torch_forget", guarded<bceloss::torch_forget>, METH_NOARGS,
     "torch_forget()\n--\n\nEvery form the C kernel keeps, forgotten."},
    {"combine", guarded<bceloss::combine_entry>, METH_VARARGS,
     "combine(values)\n--\n\nThe exactly rounded sum of float64 values (bytes), as math.fsum;\n"
     "None for a value that is not finite or a partial sum that overflows (for the tests)."},
    {"torch_last_form", guarded<bceloss::torch_last_form>, METH_O,
     "torch_last_form(loss)\n--\n\nA handle of the form of this thread's last kernel call, if "
     "`loss` is its loss."},
    {"torch_run_into",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bceloss::torch_run_into)),
     METH_FASTCALL,
     "torch_run_into(handle, gradient, x, y, w, p, gx, loss)\n--\n\nA kept form's loops into given "
     "addresses."},
    {"torch_tensors_install", guarded<bceloss::torch_tensors_install>, METH_VARARGS,
     "torch_tensors_install(Tensor, Parameter, data_address, probe, probe_data)\n--\n\nHow "
     "the entries that take tensors read their data (see torch_kernel.hpp); whether it is "
     "installed."},
    {"torch_run_tensors",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bceloss::torch_run_tensors)),
     METH_FASTCALL,
     "torch_run_tensors(handle, gradient, x, y, w, p, gx, loss)\n--\n\nA kept form's loops "
     "into given tensors."},
    {"torch_lowered_install", guarded<bceloss::torch_lowered_install>, METH_VARARGS,
     "torch_lowered_install(handles, fallback)\n--\n\nWhat torch_lowered_run reads (see "
     "torch_kernel.hpp)."},
    {"torch_lowered_run",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bceloss::torch_lowered_run)),
     METH_FASTCALL | METH_KEYWORDS,
     "torch_lowered_run(x, y, [w], [p], has_w, has_p, fn, options, gradient, site, offset, "
     "out)\n--\n\nThe call inductor's graph makes: a kept form's loops into out."},
    {"torch_kept", guarded<bceloss::torch_kept>, METH_NOARGS,
     "torch_kept()\n--\n\nHow many forms the C kernel keeps (for the tests)."},
    {"torch_in_unit_range", guarded<bceloss::torch_in_unit_range>, METH_VARARGS,
     "torch_in_unit_range(address, count, float64)\n--\n\nWhether a contiguous CPU "
     "tensor's values (at its data_ptr) lie in [0, 1] or are NaN."},
    {"set_threads", guarded<bceloss::set_threads>, METH_VARARGS,
     "set_threads(count)\n--\n\nThe threads a large call of the C kernel runs on."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_native",
    "The fused kernels of bceloss, compiled ahead of time (see bceloss._kernels).",
    -1,
    methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__native() {
    PyObject* m = PyModule_Create(&module);
    if (m != nullptr && (PyModule_AddIntConstant(m, "BLOCK", bceloss::BLOCK) != 0 ||
                         PyModule_AddIntConstant(m, "LANES", bceloss::LANES) != 0)) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
