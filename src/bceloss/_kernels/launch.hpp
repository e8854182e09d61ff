// A planned call of the fused kernel from its arguments, run on the kernels' threads: what
// launch.py's `_run` asks of `_native.run`, and what the PyTorch operator's C kernel
// (torch_kernel.cpp) runs itself.
#pragma once

#include <cstdint>

#include "loops.hpp"

namespace bceloss {

struct Arguments {
    int kind, grad, team;
    long long chunks;
    double ignore, smooth_keep, smooth_add, alpha, gamma, divisor;
    int has_alpha;
    Operand x, y, w, p, wd;
    const uint8_t* keep;
    Output out, gx, gy;
    double *sums, *wsums;
    const int64_t* starts;
    int64_t blocks;
    // where not null: the number of input values outside [0, 1] in each block (BCE on
    // probabilities, whose values the PyTorch operator's C kernel checks in this pass)
    int64_t* outside;
    // run on the host framework's threads where it handed them over (threads.hpp): a call
    // from the PyTorch operator's C kernel
    bool hosted;
};

// One pass over the call's blocks, in float64 (compute64) or float32, on `team` threads.
void launch(const Arguments& a, bool compute64);

}  // namespace bceloss
