// The C kernels of the PyTorch operators bceloss::reduced_loss_and_grad and
// bceloss::reduced_loss on CPU tensors, called by PyTorch's dispatcher through its stable C
// ABI (see torch_kernel.cpp and bceloss/_torch_kernel.py); the Python entry points that
// install them and feed them.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>

namespace bceloss {

// torch_install(addresses, (loss_and_grad, loss), codes, cpu, team=None): the libtorch
// functions the kernels call (their addresses, in torch_kernel.cpp's order), the operators
// they fall back to, PyTorch's codes of the storages' dtypes and of the CPU, the addresses of
// GOMP_parallel and omp_get_max_threads of PyTorch's OpenMP runtime (the team a large call
// runs on, threads.hpp; None: the kernels' helpers); returns the kernels' addresses (loss and
// gradient, loss), for Python to register.
PyObject* torch_install(PyObject*, PyObject* args);
// torch_remember(..., loss): the constants of the form the calling thread's kernel is falling
// back for (launch.py's Prepared), and the loss the fallback computed; returns whether the
// kernel keeps them.
PyObject* torch_remember(PyObject*, PyObject* args);
// torch_forget(): every form the kernel keeps, forgotten.
PyObject* torch_forget(PyObject*, PyObject* args);
// The exactly rounded sum of `count` finite values (_summation.combine's twin); false for a
// value that is not finite or a partial sum that overflows.
bool combine(const double* values, int64_t count, double* total);
// combine(float64 bytes): combine's total, None where it returns false (for the tests).
PyObject* combine_entry(PyObject*, PyObject* args);
// torch_last_form(loss): a handle of the form of the calling thread's last call of the kernels
// (run, or remembered by its fallback), None if neither or if `loss` is not that call's loss.
PyObject* torch_last_form(PyObject*, PyObject* args);
// torch_run_into(handle, gradient, x, y, w, p, gx, loss): the form's loops on the data at those
// addresses (0: absent), the gradient written at gx and the loss at loss; False where the
// handle is stale, the form's weights are not the call's, or the call is the Python kernel's to
// decide (run_into).
PyObject* torch_run_into(PyObject*, PyObject* const* args, Py_ssize_t count);
// torch_tensors_install(Tensor, Parameter, data_address, probe, probe_data): the tensor types
// the entries below read in place, and the address of PyTorch's `void* (PyObject*)` that gives
// a tensor's data, installed where it gives `probe`'s (a Tensor) as `probe_data`; whether so.
PyObject* torch_tensors_install(PyObject*, PyObject* args);
// torch_run_tensors(handle, gradient, x, y, w, p, gx, loss): torch_run_into on tensors (w, p
// and, without `gradient`, gx None where absent), the loss written into `loss`'s data.
PyObject* torch_run_tensors(PyObject*, PyObject* const* args, Py_ssize_t count);
// torch_lowered_install(handles, fallback): what torch_lowered_run reads: the call sites'
// handles (a dict of site -> torch_last_form handle) and the Python function it leaves other
// calls to (the same arguments).
PyObject* torch_lowered_install(PyObject*, PyObject* args);
// torch_lowered_run(x, y, [w], [p], has_w, has_p, fn, options, gradient, site, offset, out=):
// the call inductor's graph makes (_torch_inductor.run's twin): the site's kept form's loops
// into `out` (the gradient, then the loss at byte `offset`), or the fallback's result.
PyObject* torch_lowered_run(PyObject*, PyObject* const* args, size_t nargsf, PyObject* kwnames);
// torch_kept(): how many forms the kernel keeps (for the tests).
PyObject* torch_kept(PyObject*, PyObject* args);
// torch_in_unit_range(address, count, float64): whether the `count` float32 (or float64)
// values at `address` (a contiguous CPU tensor's data_ptr()) lie in [0, 1] or are NaN.
PyObject* torch_in_unit_range(PyObject*, PyObject* args);
// set_threads(count): the number of threads a large call runs on (threads.py's).
PyObject* set_threads(PyObject*, PyObject* args);

}  // namespace bceloss
