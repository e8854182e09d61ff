// The C kernels of bceloss::reduced_loss_and_grad and bceloss::reduced_loss on CPU tensors:
// what a compiled graph calls for a training step's loss (and an inference's), without a
// Python kernel between the dispatcher and the loops.
//
// PyTorch's stable C ABI (the `aoti_torch_*` and `torch_*` functions of libtorch) is the only
// part of PyTorch this file touches, through addresses Python hands over at install
// (_torch_kernel.py): the package builds without PyTorch's headers and loads without PyTorch.
// The dispatcher calls a kernel boxed: a stack of 64-bit values, the arguments in schema
// order, owned by the kernel (tensors as handles, strings as string handles, a present
// optional tensor as a heap box holding its handle, an absent one as 0), the returns written
// back from the stack's first slot.
//
// A call of a form the kernel keeps (the operator, its strings, each tensor's dtype, device,
// sizes and strides) runs the loops straight away, with the constants the Python kernel
// computed for that form (launch.py's Prepared); a call of any other form goes to the
// fallback operator (loss_and_grad, loss: the Python kernel), which hands the form's
// constants back here (`torch_remember`) when the form is one the kernel can run: its
// results are the Python kernel's to the last bit (tests/test_torch_kernel.py holds them to
// it).
#include "torch_kernel.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "launch.hpp"
#include "threads.hpp"

namespace bceloss {
namespace {

using StableIValue = uint64_t;
using Handle = void*;  // AtenTensorHandle
using Error = int32_t;

// The libtorch functions, in the order of the addresses torch_install takes.
struct Api {
    Error (*data_ptr)(Handle, void**);
    Error (*storage_size)(Handle, int64_t*);
    Error (*dim)(Handle, int64_t*);
    Error (*sizes)(Handle, int64_t**);
    Error (*strides)(Handle, int64_t**);
    Error (*dtype)(Handle, int32_t*);
    Error (*device_type)(Handle, int32_t*);
    Error (*empty_strided)(int64_t, const int64_t*, const int64_t*, int32_t, int32_t, int32_t,
                           Handle*);
    Error (*delete_tensor)(Handle);
    Error (*string_length)(void*, size_t*);
    Error (*string_data)(void*, const char**);
    Error (*delete_string)(void*);
    Error (*delete_box)(StableIValue*);
    Error (*call_dispatcher)(const char*, const char*, StableIValue*);
    const char* (*last_error)();  // may be null
};
constexpr int API_FUNCTIONS = 15;

Api api{};
// the operators a call of an unknown form goes to: loss_and_grad's, loss's
std::string fallbacks[2];
int32_t cpu = -1;
// PyTorch's dtype codes of the storages the loops read (-1: none yet)
int32_t dtype_codes[11] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
std::atomic<int> threads{1};

void check(Error e, const char* what) {
    if (e != 0) throw std::runtime_error(std::string("bceloss: PyTorch's ") + what + " failed");
}

bool storage_of_dtype(int32_t code, Storage* s) {
    for (int i = 0; i < 11; ++i) {
        if (dtype_codes[i] == code && i != static_cast<int>(Storage::f16) &&
            i != static_cast<int>(Storage::bf16)) {
            *s = static_cast<Storage>(i);
            return true;
        }
    }
    return false;
}

// The operators' schema: (str fn, Tensor input, Tensor target, Tensor? weight,
// Tensor? pos_weight, Tensor? where, str options) -> (Tensor, Tensor) (the loss and its
// gradient) or Tensor (the loss)
constexpr uint64_t ARGUMENTS = 7, TENSORS = 5;

Handle tensor_at(const StableIValue* stack, uint64_t slot) {
    if (slot <= 2) return reinterpret_cast<Handle>(stack[slot]);
    if (stack[slot] == 0) return nullptr;  // an absent optional
    return reinterpret_cast<Handle>(*reinterpret_cast<StableIValue*>(stack[slot]));
}

void append_string(std::string& key, StableIValue s) {
    size_t length = 0;
    const char* data = nullptr;
    check(api.string_length(reinterpret_cast<void*>(s), &length), "string length");
    check(api.string_data(reinterpret_cast<void*>(s), &data), "string data");
    key.append(reinterpret_cast<const char*>(&length), sizeof length);
    key.append(data, length);
}

template <class T>
void append(std::string& key, const T* values, int64_t count) {
    key.append(reinterpret_cast<const char*>(values), sizeof(T) * count);
}

// What the kernel reads of a tensor.
struct Tensor {
    Handle handle = nullptr;
    int32_t dtype = -1, device = -1;
    int64_t dim = 0;
    const int64_t* sizes = nullptr;
    const int64_t* strides = nullptr;
};

Tensor read(Handle h) {
    Tensor t;
    t.handle = h;
    if (h == nullptr) return t;
    int64_t* sizes;
    int64_t* strides;
    check(api.dtype(h, &t.dtype), "dtype");
    check(api.device_type(h, &t.device), "device type");
    check(api.dim(h, &t.dim), "dim");
    check(api.sizes(h, &sizes), "sizes");
    check(api.strides(h, &strides), "strides");
    t.sizes = sizes;
    t.strides = strides;
    return t;
}

// The form of a call: its strings, then each tensor's dtype, device, sizes and strides.
std::string form_key(const StableIValue* stack, const Tensor* tensors, bool gradient) {
    std::string key(1, gradient ? 'g' : 'l');  // the operator
    key.reserve(256);
    append_string(key, stack[0]);
    append_string(key, stack[6]);
    for (uint64_t i = 0; i < TENSORS; ++i) {
        const Tensor& t = tensors[i];
        const int64_t head[3] = {t.handle != nullptr, t.dtype, t.device};
        append(key, head, 3);
        if (t.handle == nullptr) continue;
        append(key, &t.dim, 1);
        append(key, t.sizes, t.dim);
        append(key, t.strides, t.dim);
    }
    return key;
}

bool contiguous(const Tensor& t) {
    int64_t expected = 1;
    for (int64_t d = t.dim - 1; d >= 0; --d) {
        if (t.sizes[d] != 1 && t.strides[d] != expected) return false;
        expected *= t.sizes[d];
    }
    return true;
}

int64_t numel(const Tensor& t) {
    int64_t n = 1;
    for (int64_t d = 0; d < t.dim; ++d) n *= t.sizes[d];
    return n;
}

// How the loops read the call's tensors, where they can read them in place: x and y whole,
// weight and pos_weight periodic (their shape, leading 1s aside, the input's last
// dimensions: plan.py's `periodic` without a copy).
struct Layout {
    Storage x, y, w, p;
    int64_t n = 0, w_period = 0, p_period = 0;  // a period of 0: absent
    int32_t x_dtype = -1;
    std::vector<int64_t> x_sizes;
};

bool periodic(const Tensor& a, const Tensor& x, Storage* s, int64_t* period) {
    *period = 0;
    if (a.handle == nullptr) return true;
    if (!storage_of_dtype(a.dtype, s) || !contiguous(a)) return false;
    int64_t first = 0;
    while (first < a.dim && a.sizes[first] == 1) ++first;
    const int64_t kept = a.dim - first;
    if (kept > x.dim) return false;
    for (int64_t d = 0; d < kept; ++d) {
        if (a.sizes[first + d] != x.sizes[x.dim - kept + d]) return false;
    }
    *period = numel(a);
    return *period >= 1;
}

bool layout_of(const Tensor* t, Layout* l) {
    const Tensor& x = t[0];
    const Tensor& y = t[1];
    for (uint64_t i = 0; i < TENSORS; ++i) {
        if (t[i].handle != nullptr && t[i].device != cpu) return false;
    }
    if (t[4].handle != nullptr || !storage_of_dtype(x.dtype, &l->x) ||
        !storage_of_dtype(y.dtype, &l->y) || (l->x != Storage::f32 && l->x != Storage::f64) ||
        !contiguous(x) || !contiguous(y) || x.dim != y.dim ||
        std::memcmp(x.sizes, y.sizes, sizeof(int64_t) * x.dim) != 0) {
        return false;
    }
    l->n = numel(x);
    l->x_dtype = x.dtype;
    l->x_sizes.assign(x.sizes, x.sizes + x.dim);
    return l->n >= 1 && periodic(t[2], x, &l->w, &l->w_period) &&
           periodic(t[3], x, &l->p, &l->p_period);
}

// A form the kernel runs: its layout and Prepared's constants.
struct Form {
    Layout layout;
    Arguments constants{};  // the kernel's arguments a call does not change
    std::vector<int64_t> starts;
    bool compute64 = false, sum = false;
    double divisor = 1, denominator = 1;
    int32_t out_dtype = -1;
};

constexpr size_t MAX_FORMS = 64;  // then every form is forgotten (a loss of many shapes)
std::mutex forms_lock;
std::unordered_map<std::string, std::shared_ptr<const Form>> forms;

// The form the calling thread's kernel is falling back for, until the fallback returns.
thread_local std::string pending_key;
thread_local Layout pending_layout;
thread_local bool pending = false;
// The form of the calling thread's last call, run or remembered (null: neither), and the data
// address of that call's loss, which torch_last_form hands to Python as a handle (`handles`:
// its index and the generation, which torch_forget and torch_install advance) for that loss
// alone: Python code run in between (a garbage collector's callback, a signal handler) may
// make calls of its own.
thread_local std::shared_ptr<const Form> last_form;
thread_local const void* last_loss = nullptr;
std::vector<std::shared_ptr<const Form>> handles;
uint32_t generation = 1;

}  // namespace

// The exactly rounded sum of finite values (_summation.combine's math.fsum): Shewchuk's
// non-overlapping partials, each addition split into its rounded sum and its exact error
// (TwoSum), then the partials added from the largest with the last rounding corrected to
// nearest (a half-way error decided by the sign of the next partial). False for a value
// that is not finite or a partial that overflows: the Python kernel decides those.
bool combine(const double* values, int64_t count, double* total) {
    std::vector<double> partials;
    partials.reserve(16);
    for (int64_t k = 0; k < count; ++k) {
        double x = values[k];
        if (!std::isfinite(x)) return false;
        size_t kept = 0;
        for (double y : partials) {
            if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
            const double hi = x + y;
            const double lo = y - (hi - x);
            if (lo != 0.0) partials[kept++] = lo;
            x = hi;
        }
        if (!std::isfinite(x)) return false;
        partials.resize(kept);
        if (x != 0.0) partials.push_back(x);
    }
    double hi = 0.0;
    size_t n = partials.size();
    if (n > 0) {
        hi = partials[--n];
        double lo = 0.0;
        while (n > 0) {
            const double x = hi;
            const double y = partials[--n];
            hi = x + y;
            lo = y - (hi - x);
            if (lo != 0.0) break;
        }
        if (n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))) {
            const double y = lo * 2.0;
            const double x = hi + y;
            if (y == x - hi) hi = x;
        }
    }
    *total = hi;
    return true;
}

namespace {

Handle empty(const std::vector<int64_t>& sizes, int32_t dtype) {
    std::vector<int64_t> strides(sizes.size());
    int64_t stride = 1;
    for (size_t d = sizes.size(); d-- > 0;) {
        strides[d] = stride;
        stride *= sizes[d] > 1 ? sizes[d] : 1;
    }
    Handle h = nullptr;
    check(api.empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(), dtype,
                            cpu, 0, &h),
          "empty_strided");
    return h;
}

// Whether a tensor (or an absent one) has memory behind its elements: not where its storage
// was resized to no bytes (a storage shrunk to fewer bytes than its tensor reaches is not
// told apart: PyTorch's own operators read past it too).
bool has_memory(const Tensor& t) {
    if (t.handle == nullptr) return true;
    for (int64_t d = 0; d < t.dim; ++d) {
        if (t.sizes[d] == 0) return true;
    }
    int64_t bytes = 0;
    check(api.storage_size(t.handle, &bytes), "storage size");
    return bytes > 0;
}

void* data_of(Handle h) {
    void* data = nullptr;
    check(api.data_ptr(h, &data), "data_ptr");
    return data;
}

// (team, chunks) of a call, launch.py's `_team`: the calling thread alone up to four blocks'
// elements (SERIAL_SIZE), or up to one where the call runs on PyTorch's OpenMP team
// (`Arguments::hosted`), whose threads a training step keeps awake, not on helpers to wake.
void team_of(const Form& f, int* team, long long* chunks) {
    const int64_t blocks = static_cast<int64_t>(f.starts.size()) - 1;
    if (f.layout.n <= (host_team_in_use() ? 1 : 4) * BLOCK) {
        *team = 1;
        *chunks = 1;
        return;
    }
    const int count = threads.load(std::memory_order_relaxed);
    *team = static_cast<int>(blocks < count ? blocks : count);
    if (*team < 1) *team = 1;
    *chunks = *team == 1 ? 1 : (8LL * *team < blocks ? 8LL * *team : blocks);
}

// The loops of a call of form `f` on the tensors' data at `x`, `y`, `w`, `p` (null: absent),
// the gradient written at `gx` (with `gradient`) and the loss at `loss`: Prepared.loss_and_grad,
// or Prepared.loss without `gradient`. False where the call is for the Python kernel to decide:
// a total that is not finite, or BCE on probabilities with an input value outside [0, 1],
// which the loops count in their pass (the Python kernel refuses the call).
bool run_into(const Form& f, void* x, void* y, void* w, void* p, void* gx, void* loss,
              bool gradient) {
    const Layout& l = f.layout;
    std::vector<double> sums(f.starts.size() - 1);
    const bool checked = f.constants.kind == static_cast<int>(Kind::probabilities);
    std::vector<int64_t> outside(checked ? sums.size() : 0);
    Arguments a = f.constants;
    a.grad = gradient ? 1 : 0;
    team_of(f, &a.team, &a.chunks);
    a.divisor = gradient ? f.divisor : 1.0;
    a.x = Operand{x, l.x, l.n};
    a.y = Operand{y, l.y, l.n};
    a.w = l.w_period ? Operand{w, l.w, l.w_period} : Operand{nullptr, l.x, 1};
    a.p = l.p_period ? Operand{p, l.p, l.p_period} : Operand{nullptr, l.x, 1};
    a.gx = Output{gradient ? gx : nullptr, l.x};
    a.sums = sums.data();
    a.starts = f.starts.data();
    a.blocks = static_cast<int64_t>(sums.size());
    a.outside = checked ? outside.data() : nullptr;
    a.hosted = true;
    launch(a, f.compute64);
    double total;
    bool inside = true;
    for (const int64_t count : outside) inside = inside && count == 0;
    if (!inside || !combine(sums.data(), a.blocks, &total)) return false;
    // _reduce.finish: divided in float64, rounded once to the loss's dtype
    const double value = f.sum ? total : total / f.denominator;
    if (f.out_dtype == dtype_codes[static_cast<int>(Storage::f64)]) {
        *static_cast<double*>(loss) = value;
    } else {
        *static_cast<float*>(loss) = static_cast<float>(value);
    }
    return true;
}

// run_into on the call's tensors, into new tensors (deleted where it returns false).
bool run_form(const Form& f, const Tensor* t, bool gradient, Handle* loss, Handle* grad) {
    const Layout& l = f.layout;
    *grad = gradient ? empty(l.x_sizes, l.x_dtype) : nullptr;
    *loss = empty({}, f.out_dtype);
    void* w = l.w_period ? data_of(t[2].handle) : nullptr;
    void* p = l.p_period ? data_of(t[3].handle) : nullptr;
    if (!run_into(f, data_of(t[0].handle), data_of(t[1].handle), w, p,
                  gradient ? data_of(*grad) : nullptr, data_of(*loss), gradient)) {
        if (gradient) api.delete_tensor(*grad);
        api.delete_tensor(*loss);
        return false;
    }
    return true;
}

void release_arguments(StableIValue* stack) {
    api.delete_string(reinterpret_cast<void*>(stack[0]));
    api.delete_string(reinterpret_cast<void*>(stack[6]));
    for (uint64_t slot = 1; slot <= TENSORS; ++slot) {
        Handle h = tensor_at(stack, slot);
        if (h != nullptr) api.delete_tensor(h);
        if (slot >= 3 && stack[slot] != 0)
            api.delete_box(reinterpret_cast<StableIValue*>(stack[slot]));
    }
}

// The calling thread's pending form for the length of a fallback, the one before it restored
// after: a call that Python code of the fallback makes (a garbage collector's callback) falls
// back with a pending form of its own and leaves this one's as it was.
struct PendingForm {
    std::string key;
    Layout layout;
    bool runnable;
    PendingForm(std::string k, Layout l, bool r)
        : key(std::move(pending_key)), layout(std::move(pending_layout)), runnable(pending) {
        pending_key = std::move(k);
        pending_layout = std::move(l);
        pending = r;
    }
    ~PendingForm() {
        pending_key = std::move(key);
        pending_layout = std::move(layout);
        pending = runnable;
    }
    PendingForm(const PendingForm&) = delete;
    PendingForm& operator=(const PendingForm&) = delete;
};

void fall_back(StableIValue* stack, bool gradient, std::string key, Layout layout, bool runnable) {
    Error e;
    {
        PendingForm hold(std::move(key), std::move(layout), runnable);
        e = api.call_dispatcher(fallbacks[gradient ? 0 : 1].c_str(), "", stack);
    }
    if (e != 0) {  // the Python kernel's exception, its message without the traceback
        const char* what = api.last_error != nullptr ? api.last_error() : nullptr;
        std::string message = what != nullptr ? what : "bceloss: the Python kernel failed";
        const size_t at = message.find("\n\nAt:");
        if (at != std::string::npos) message.resize(at);
        // PyTorch names the Python exception's type before its message: a RuntimeError reaches
        // the caller as one again, with the message a call the Python kernel ran gives
        const std::string same_type = "RuntimeError: ";
        if (message.compare(0, same_type.size(), same_type) == 0)
            message.erase(0, same_type.size());
        throw std::runtime_error(message);
    }
}

void run(StableIValue* stack, uint64_t arguments, uint64_t returns, bool gradient) {
    if (arguments != ARGUMENTS || returns != (gradient ? 2u : 1u)) {
        throw std::runtime_error("bceloss: the operator's schema is not the kernel's");
    }
    Tensor tensors[TENSORS];
    for (uint64_t i = 0; i < TENSORS; ++i) tensors[i] = read(tensor_at(stack, i + 1));
    std::string key = form_key(stack, tensors, gradient);
    std::shared_ptr<const Form> form;
    last_form = nullptr;
    last_loss = nullptr;
    // a tensor whose storage was freed (resized to no bytes, as FSDP frees a parameter) has
    // no memory to read: the Python kernel's to refuse, never a form's
    bool allocated = true;
    for (const Tensor& t : tensors) allocated = allocated && has_memory(t);
    if (allocated) {
        std::lock_guard<std::mutex> hold(forms_lock);
        auto found = forms.find(key);
        if (found != forms.end()) form = found->second;
    }
    Handle loss = nullptr, grad = nullptr;
    // (BCE on probabilities checks its input's values at every call, in the loops' pass: one
    // outside [0, 1] is the Python kernel's to refuse, the express lane's check of its calls)
    if (form != nullptr && run_form(*form, tensors, gradient, &loss, &grad)) {
        last_form = form;
        last_loss = data_of(loss);
        release_arguments(stack);
        stack[0] = reinterpret_cast<StableIValue>(loss);
        if (gradient) stack[1] = reinterpret_cast<StableIValue>(grad);
        return;
    }
    Layout layout;
    const bool runnable = allocated && form == nullptr && layout_of(tensors, &layout);
    fall_back(stack, gradient, std::move(key), std::move(layout), runnable);
}

void loss_and_grad_kernel(StableIValue* stack, uint64_t arguments, uint64_t returns) {
    run(stack, arguments, returns, true);
}

void loss_kernel(StableIValue* stack, uint64_t arguments, uint64_t returns) {
    run(stack, arguments, returns, false);
}

}  // namespace

PyObject* torch_install(PyObject*, PyObject* args) {
    PyObject* addresses;
    const char *loss_and_grad, *loss;
    PyObject* codes;
    int cpu_code;
    PyObject* team = Py_None;
    if (!PyArg_ParseTuple(args, "O!(ss)O!i|O", &PyTuple_Type, &addresses, &loss_and_grad, &loss,
                          &PyTuple_Type, &codes, &cpu_code, &team)) {
        return nullptr;
    }
    void* host[2] = {nullptr, nullptr};  // GOMP_parallel, omp_get_max_threads
    if (team != Py_None) {
        if (!PyTuple_Check(team) || PyTuple_GET_SIZE(team) != 2) {
            PyErr_SetString(PyExc_ValueError, "bceloss: torch_install's team takes 2 addresses");
            return nullptr;
        }
        for (int i = 0; i < 2; ++i) {
            host[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(team, i));
            if (PyErr_Occurred()) return nullptr;
        }
    }
    if (PyTuple_GET_SIZE(addresses) != API_FUNCTIONS || PyTuple_GET_SIZE(codes) != 11) {
        PyErr_SetString(PyExc_ValueError, "bceloss: torch_install takes 15 addresses, 11 codes");
        return nullptr;
    }
    void* table[API_FUNCTIONS];
    for (int i = 0; i < API_FUNCTIONS; ++i) {
        table[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(addresses, i));
        if (PyErr_Occurred()) return nullptr;
        if (table[i] == nullptr && i != API_FUNCTIONS - 1) {
            PyErr_SetString(PyExc_ValueError, "bceloss: a libtorch function is missing");
            return nullptr;
        }
    }
    int32_t read_codes[11];
    for (int i = 0; i < 11; ++i) {
        read_codes[i] = static_cast<int32_t>(PyLong_AsLong(PyTuple_GET_ITEM(codes, i)));
        if (PyErr_Occurred()) return nullptr;
    }
    std::lock_guard<std::mutex> hold(forms_lock);
    static_assert(sizeof(Api) == API_FUNCTIONS * sizeof(void*), "one pointer a function");
    std::memcpy(&api, table, sizeof api);
    std::memcpy(dtype_codes, read_codes, sizeof dtype_codes);
    fallbacks[0] = loss_and_grad;
    fallbacks[1] = loss;
    cpu = cpu_code;
    forms.clear();
    handles.clear();
    ++generation;
    use_host_team(reinterpret_cast<HostParallel>(host[0]), reinterpret_cast<HostThreads>(host[1]));
    return Py_BuildValue("(NN)", PyLong_FromVoidPtr(reinterpret_cast<void*>(&loss_and_grad_kernel)),
                         PyLong_FromVoidPtr(reinterpret_cast<void*>(&loss_kernel)));
}

namespace {
char* data_of_object(PyObject* o);
}  // namespace

PyObject* torch_remember(PyObject*, PyObject* args) {
    int kind, compute64, has_alpha, sum, out_dtype;
    PyObject *starts, *loss;
    double ignore, smooth_keep, smooth_add, alpha, gamma, divisor, denominator;
    if (!PyArg_ParseTuple(args, "ipOdddpdddpdiO", &kind, &compute64, &starts, &ignore, &smooth_keep,
                          &smooth_add, &has_alpha, &alpha, &gamma, &divisor, &sum, &denominator,
                          &out_dtype, &loss)) {
        return nullptr;
    }
    if (!pending) Py_RETURN_FALSE;
    Py_buffer view;
    if (PyObject_GetBuffer(starts, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return nullptr;
    auto form = std::make_shared<Form>();
    const bool int64 = view.itemsize == 8 && view.format != nullptr &&
                       (std::strcmp(view.format, "l") == 0 || std::strcmp(view.format, "q") == 0);
    if (int64) {
        const int64_t* s = static_cast<const int64_t*>(view.buf);
        form->starts.assign(s, s + view.len / 8);
    }
    PyBuffer_Release(&view);
    const Layout& l = pending_layout;
    // the constants must be those of the pending form: blocks covering its elements in order
    bool usable = int64 && form->starts.size() >= 2 && form->starts.front() == 0 &&
                  form->starts.back() == l.n && kind >= 0 && kind <= 2 &&
                  (out_dtype == dtype_codes[static_cast<int>(Storage::f32)] ||
                   out_dtype == dtype_codes[static_cast<int>(Storage::f64)]);
    for (size_t b = 1; usable && b < form->starts.size(); ++b) {
        usable = form->starts[b - 1] < form->starts[b];
    }
    if (!usable) Py_RETURN_FALSE;
    form->layout = l;
    Arguments& c = form->constants;  // no mask, weights' sums, elementwise loss or d/dy
    c.wd = Operand{nullptr, Storage::f64, 1};
    c.out = c.gy = Output{nullptr, l.x};
    c.kind = kind;
    c.ignore = ignore;
    c.smooth_keep = smooth_keep;
    c.smooth_add = smooth_add;
    c.has_alpha = has_alpha;
    c.alpha = alpha;
    c.gamma = gamma;
    form->compute64 = compute64 != 0;
    form->divisor = divisor;
    form->sum = sum != 0;
    form->denominator = denominator;
    form->out_dtype = out_dtype;
    pending = false;
    std::lock_guard<std::mutex> hold(forms_lock);
    if (forms.size() >= MAX_FORMS) forms.clear();
    last_form = form;
    last_loss = data_of_object(loss);
    forms[pending_key] = std::move(form);
    Py_RETURN_TRUE;
}

PyObject* torch_forget(PyObject*, PyObject*) {
    std::lock_guard<std::mutex> hold(forms_lock);
    forms.clear();
    handles.clear();
    ++generation;
    Py_RETURN_NONE;
}

namespace {

// The form of a handle torch_last_form gave, null where it is stale or where its weight and
// pos_weight are not the call's (a form reads them where they are given, and only there).
std::shared_ptr<const Form> form_of_handle(uint64_t handle, bool has_w, bool has_p) {
    std::shared_ptr<const Form> form;
    {
        std::lock_guard<std::mutex> hold(forms_lock);
        const uint64_t index = handle & 0xffffffffu;
        if ((handle >> 32) != generation || index >= handles.size()) return nullptr;
        form = handles[index];
    }
    const Layout& l = form->layout;
    return (l.w_period != 0) == has_w && (l.p_period != 0) == has_p ? form : nullptr;
}

}  // namespace

PyObject* torch_last_form(PyObject*, PyObject* loss) {
    // (the form of the call whose loss this is, or none)
    if (last_form == nullptr || last_loss == nullptr || data_of_object(loss) != last_loss) {
        Py_RETURN_NONE;
    }
    std::lock_guard<std::mutex> hold(forms_lock);
    if (handles.size() >= MAX_FORMS) {  // (a graph of many shapes: the handles start again)
        handles.clear();
        ++generation;
    }
    handles.push_back(last_form);
    const uint64_t handle = (static_cast<uint64_t>(generation) << 32) | (handles.size() - 1);
    return PyLong_FromUnsignedLongLong(handle);
}

PyObject* torch_run_into(PyObject*, PyObject* const* args, Py_ssize_t count) {
    if (count != 8) {
        PyErr_SetString(PyExc_TypeError, "bceloss: torch_run_into takes 8 arguments");
        return nullptr;
    }
    uint64_t values[8];
    for (int i = 0; i < 8; ++i) {
        values[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (PyErr_Occurred()) return nullptr;
    }
    const std::shared_ptr<const Form> form =
        form_of_handle(values[0], values[4] != 0, values[5] != 0);
    if (form == nullptr) Py_RETURN_FALSE;
    auto at = [&](int i) { return reinterpret_cast<void*>(values[i]); };
    try {
        return PyBool_FromLong(
            run_into(*form, at(2), at(3), at(4), at(5), at(6), at(7), values[1] != 0));
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
}

namespace {

// How the entries below read a tensor's data (torch_tensors_install): the tensor types they
// read in place and PyTorch's function that gives a tensor's data address (null: none given).
PyTypeObject* tensor_types[2] = {nullptr, nullptr};
void* (*tensor_data)(PyObject*) = nullptr;
// The lowered call's (torch_lowered_install): the handles of the call sites (a dict,
// _torch_inductor's) and the Python function a call without one goes to.
PyObject* site_handles = nullptr;
PyObject* lowered_fallback = nullptr;

// The data address of a tensor of tensor_types, or null (another object, no function to read
// it with, a tensor without data).
char* data_of_object(PyObject* o) {
    if (tensor_data == nullptr || (Py_TYPE(o) != tensor_types[0] && Py_TYPE(o) != tensor_types[1]))
        return nullptr;
    try {
        return static_cast<char*>(tensor_data(o));
    } catch (...) {  // (PyTorch's error for a tensor without storage)
        return nullptr;
    }
}

// run_into on the form of `handle` and the tensors' data, `w` and `p` None where absent, the
// loss written at `loss` plus `offset` bytes and, with `gradient`, the gradient at `gx`'s data:
// false where the handle is stale, a tensor is not read in place, or the call is the Python
// kernel's to decide.
bool run_objects(uint64_t handle, bool gradient, PyObject* x, PyObject* y, PyObject* w, PyObject* p,
                 PyObject* gx, PyObject* loss, Py_ssize_t offset, bool release) {
    const std::shared_ptr<const Form> form = form_of_handle(handle, w != Py_None, p != Py_None);
    if (form == nullptr || (gradient && gx == Py_None)) return false;
    char* data[6] = {};
    PyObject* objects[6] = {x, y, w, p, gradient ? gx : Py_None, loss};
    for (int i = 0; i < 6; ++i) {
        if (objects[i] != Py_None && (data[i] = data_of_object(objects[i])) == nullptr)
            return false;
    }
    if (data[0] == nullptr || data[1] == nullptr || data[5] == nullptr) return false;
    // a large call lets other Python threads run meanwhile, as the operator's does (the
    // caller's references keep the tensors)
    PyThreadState* released = release && form->layout.n > BLOCK ? PyEval_SaveThread() : nullptr;
    try {
        const bool done = run_into(*form, data[0], data[1], data[2], data[3], data[4],
                                   data[5] + offset, gradient);
        if (released != nullptr) PyEval_RestoreThread(released);
        return done;
    } catch (...) {
        if (released == nullptr) throw;
        PyEval_RestoreThread(released);  // (no memory for the blocks' sums: the operator's)
        return false;
    }
}

// The lowered call on a site's kept form, without Python in between: false where it is for
// the Python function (no handle yet, a stale one, another type of tensor, or a call the
// kernel leaves to the Python kernel).
bool lowered_in_place(PyObject* const* args, Py_ssize_t count, PyObject* out) {
    if (site_handles == nullptr || count < 9) return false;
    const Py_ssize_t tensors = count - 7;  // (x, y, present weight and pos_weight), 7 constants
    PyObject* const* constants = args + tensors;
    const bool has_w = constants[0] == Py_True, has_p = constants[1] == Py_True;
    if (tensors != 2 + has_w + has_p || !PyBool_Check(constants[4])) return false;
    PyObject* handle = PyDict_GetItemWithError(site_handles, constants[5]);
    if (handle == nullptr || !PyLong_CheckExact(handle) || !PyLong_CheckExact(constants[6])) {
        PyErr_Clear();
        return false;
    }
    const uint64_t key = PyLong_AsUnsignedLongLong(handle);
    const Py_ssize_t offset = PyLong_AsSsize_t(constants[6]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return false;
    }
    PyObject* w = has_w ? args[2] : Py_None;
    PyObject* p = has_p ? args[2 + has_w] : Py_None;
    // (inductor's own kernels keep the GIL: so does the graph's call)
    return run_objects(key, constants[4] == Py_True, args[0], args[1], w, p, out, out, offset,
                       false);
}

}  // namespace

PyObject* torch_tensors_install(PyObject*, PyObject* args) {
    PyObject *tensor, *parameter, *probe;
    unsigned long long address, probe_data;
    if (!PyArg_ParseTuple(args, "O!O!KOK", &PyType_Type, &tensor, &PyType_Type, &parameter,
                          &address, &probe, &probe_data)) {
        return nullptr;
    }
    if (address == 0 || Py_TYPE(probe) != reinterpret_cast<PyTypeObject*>(tensor)) {
        PyErr_SetString(PyExc_ValueError,
                        "bceloss: torch_tensors_install takes an address and a tensor");
        return nullptr;
    }
    // the function read on a tensor whose data address is known: one of another signature
    // or behaviour (a PyTorch that changed it) is not installed
    auto read = reinterpret_cast<void* (*)(PyObject*)>(static_cast<uintptr_t>(address));
    void* got = nullptr;
    try {
        got = read(probe);
    } catch (...) {
        got = nullptr;
    }
    if (got == nullptr || reinterpret_cast<uintptr_t>(got) != probe_data) Py_RETURN_FALSE;
    Py_INCREF(tensor);
    Py_INCREF(parameter);
    Py_XDECREF(reinterpret_cast<PyObject*>(tensor_types[0]));
    Py_XDECREF(reinterpret_cast<PyObject*>(tensor_types[1]));
    tensor_types[0] = reinterpret_cast<PyTypeObject*>(tensor);
    tensor_types[1] = reinterpret_cast<PyTypeObject*>(parameter);
    tensor_data = read;
    Py_RETURN_TRUE;
}

PyObject* torch_run_tensors(PyObject*, PyObject* const* args, Py_ssize_t count) {
    if (count != 8) {
        PyErr_SetString(PyExc_TypeError, "bceloss: torch_run_tensors takes 8 arguments");
        return nullptr;
    }
    const uint64_t handle = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred()) return nullptr;
    try {
        return PyBool_FromLong(run_objects(handle, args[1] == Py_True, args[2], args[3], args[4],
                                           args[5], args[6], args[7], 0, true));
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
}

PyObject* torch_lowered_install(PyObject*, PyObject* args) {
    PyObject *handles_dict, *fallback;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &handles_dict, &fallback)) return nullptr;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "bceloss: torch_lowered_install takes a function");
        return nullptr;
    }
    Py_INCREF(handles_dict);
    Py_INCREF(fallback);
    Py_XDECREF(site_handles);
    Py_XDECREF(lowered_fallback);
    site_handles = handles_dict;
    lowered_fallback = fallback;
    Py_RETURN_NONE;
}

PyObject* torch_lowered_run(PyObject*, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
    const Py_ssize_t count = PyVectorcall_NARGS(nargsf);
    if (lowered_fallback == nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "bceloss: torch_lowered_install was not called");
        return nullptr;
    }
    if (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) == 1 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "out") == 0) {
        PyObject* out = args[count];
        try {
            if (lowered_in_place(args, count, out)) {
                Py_INCREF(out);
                return out;
            }
        } catch (const std::exception& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
            return nullptr;
        }
    }
    return PyObject_Vectorcall(lowered_fallback, args, nargsf, kwnames);
}

PyObject* combine_entry(PyObject*, PyObject* args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return nullptr;
    double total = 0.0;
    const bool finite = view.len % sizeof(double) == 0 &&
                        combine(static_cast<const double*>(view.buf),
                                static_cast<int64_t>(view.len / sizeof(double)), &total);
    PyBuffer_Release(&view);
    if (!finite) Py_RETURN_NONE;
    return PyFloat_FromDouble(total);
}

PyObject* torch_kept(PyObject*, PyObject*) {
    std::lock_guard<std::mutex> hold(forms_lock);
    return PyLong_FromSize_t(forms.size());
}

PyObject* torch_in_unit_range(PyObject*, PyObject* args) {
    PyObject* address;
    long long count;
    int float64;
    if (!PyArg_ParseTuple(args, "OLp", &address, &count, &float64)) return nullptr;
    const void* data = PyLong_AsVoidPtr(address);
    if (PyErr_Occurred()) return nullptr;
    if (count < 0 || (count > 0 && data == nullptr)) {
        PyErr_SetString(PyExc_ValueError, "bceloss: torch_in_unit_range takes a tensor's data");
        return nullptr;
    }
    const bool inside = float64 ? all_in_unit_range(static_cast<const double*>(data), count)
                                : all_in_unit_range(static_cast<const float*>(data), count);
    return PyBool_FromLong(inside);
}

PyObject* set_threads(PyObject*, PyObject* args) {
    int count;
    if (!PyArg_ParseTuple(args, "i", &count)) return nullptr;
    if (count < 1) {
        PyErr_SetString(PyExc_ValueError, "bceloss: threads must be at least 1");
        return nullptr;
    }
    threads = count;
    Py_RETURN_NONE;
}

}  // namespace bceloss
