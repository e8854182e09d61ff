// The loops of the fused kernels (see loops.hpp), compiled for float32 and float64.
#include "loops.hpp"

#include <algorithm>

namespace bceloss {

namespace {

template <class F, class S>
void decode_run(const S* __restrict src, int64_t count, F* __restrict dst) {
    for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<F>(src[k]);
}

// buf into the bits of a half type, through `narrow` (float to the bits); a float64 value
// through a float32 rounded to odd, so that it is rounded once
template <class F, class Narrow>
void encode_bits(uint16_t* __restrict dst, int64_t count, const F* __restrict buf, Narrow narrow) {
    for (int64_t k = 0; k < count; ++k) {
        if constexpr (std::is_same_v<F, double>) {
            dst[k] = narrow(float32_round_to_odd(buf[k]));
        } else {
            dst[k] = narrow(buf[k]);
        }
    }
}

}  // namespace

template <class F>
BCELOSS_CLONES void decode(const Operand& a, int64_t start, int64_t count, F* dst) {
    const char* base = static_cast<const char*>(a.data);
    switch (a.type) {
        case Storage::f32:
            return decode_run(reinterpret_cast<const float*>(base) + start, count, dst);
        case Storage::f64:
            return decode_run(reinterpret_cast<const double*>(base) + start, count, dst);
        case Storage::f16: {
            const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + start;
            for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<F>(half_to_float(src[k]));
            return;
        }
        case Storage::bf16: {
            const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + start;
            for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<F>(bfloat16_to_float(src[k]));
            return;
        }
        case Storage::b8: {  // a bool array's True may be any byte but 0
            const uint8_t* src = reinterpret_cast<const uint8_t*>(base) + start;
            for (int64_t k = 0; k < count; ++k) dst[k] = src[k] != 0 ? F(1) : F(0);
            return;
        }
        case Storage::i8:
            return decode_run(reinterpret_cast<const int8_t*>(base) + start, count, dst);
        case Storage::u8:
            return decode_run(reinterpret_cast<const uint8_t*>(base) + start, count, dst);
        case Storage::i32:
            return decode_run(reinterpret_cast<const int32_t*>(base) + start, count, dst);
        case Storage::u32:
            return decode_run(reinterpret_cast<const uint32_t*>(base) + start, count, dst);
        case Storage::i64:
            return decode_run(reinterpret_cast<const int64_t*>(base) + start, count, dst);
        case Storage::u64:
            return decode_run(reinterpret_cast<const uint64_t*>(base) + start, count, dst);
    }
}

template <class F>
BCELOSS_CLONES void encode(const Output& out, int64_t start, int64_t count, const F* buf) {
    switch (out.type) {
        case Storage::f32: {
            float* dst = static_cast<float*>(out.data) + start;
            for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<float>(buf[k]);
            return;
        }
        case Storage::f64: {
            double* dst = static_cast<double*>(out.data) + start;
            for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<double>(buf[k]);
            return;
        }
        case Storage::f16:
            return encode_bits(static_cast<uint16_t*>(out.data) + start, count, buf,
                               [](float v) { return float_to_half(v); });
        case Storage::bf16:
            return encode_bits(static_cast<uint16_t*>(out.data) + start, count, buf,
                               [](float v) { return float_to_bfloat16(v); });
        default:  // outputs are floating (the planning sees to it)
            return;
    }
}

template <class F>
BCELOSS_CLONES void add_lanes(double* __restrict lanes, const F* __restrict buf, int64_t count) {
    // All the lanes run down the rows in registers, as eight vectors of eight (GCC's and
    // clang's vector extension; four narrower instructions each where the CPU has no 512-bit
    // vectors): updating the lanes in memory row after row, or one vector of lanes at a time,
    // waits on a chain of dependent adds. Values are widened sixteen at a time: GCC widens
    // eight floats to eight doubles in three instructions more than the one it needs, but
    // sixteen in two widenings of eight.
    typedef double Lanes8 __attribute__((vector_size(8 * sizeof(double))));
    typedef double Lanes16 __attribute__((vector_size(16 * sizeof(double))));
    typedef F Values16 __attribute__((vector_size(16 * sizeof(F))));
    constexpr int64_t VECTORS = LANES / 8;
    Lanes8 acc[VECTORS];
    std::memcpy(acc, lanes, sizeof acc);
    const int64_t rows = count / LANES;
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < VECTORS; g += 2) {
            Values16 v;
            std::memcpy(&v, buf + r * LANES + g * 8, sizeof v);
            const Lanes16 wide = __builtin_convertvector(v, Lanes16);
            Lanes8 low, high;
            std::memcpy(&low, &wide, sizeof low);
            std::memcpy(&high, reinterpret_cast<const char*>(&wide) + sizeof low, sizeof high);
            acc[g] += low;
            acc[g + 1] += high;
        }
    }
    std::memcpy(lanes, acc, sizeof acc);
    const F* tail = buf + rows * LANES;
    for (int64_t j = 0; j < count - rows * LANES; ++j) lanes[j] += static_cast<double>(tail[j]);
}

template <class F>
BCELOSS_CLONES int64_t add_kept(double* lanes, const F* buf, const uint8_t* keep, int64_t count,
                                int64_t kept, double* packed) {
    // The kept elements are packed without a branch (each element is written, and overwritten
    // by the next when dropped: a branch on a random mask costs twice as much), behind
    // kept % LANES zeros, then added as `add_lanes` adds: +0.0 leaves a lane as it is (a lane
    // starts at +0.0, so it never holds -0.0).
    const int64_t phase = kept % LANES;
    for (int64_t j = 0; j < phase; ++j) packed[j] = 0.0;
    int64_t j = phase;
    for (int64_t k = 0; k < count; ++k) {
        packed[j] = static_cast<double>(buf[k]);
        j += keep[k] != 0;
    }
    add_lanes(lanes, packed, j);
    return kept + j - phase;
}

double fold(double* lanes) {
    for (int64_t width = LANES / 2; width >= 1; width /= 2) {
        for (int64_t j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    }
    return lanes[0];
}

int64_t kept_blocks(const uint8_t* keep, int64_t n, int64_t* starts, int64_t* kept) {
    constexpr int64_t GROUP = 256;  // mask elements counted at a time, looking for a start
    const int64_t chunks = (n + BLOCK - 1) / BLOCK;
    // before[j]: kept elements before input block j (a running count)
    int64_t* before = starts;  // borrowed: chunks + 1 <= n / BLOCK + 2 entries, read first
    int64_t total = 0;
    before[0] = 0;
    for (int64_t j = 0; j < chunks; ++j) {
        const int64_t stop = std::min(n, (j + 1) * BLOCK);
        // (16 bits, which hold a block's count: the narrower the count, the more bytes a
        // vector compares and adds at a time)
        static_assert(BLOCK <= INT16_MAX, "a block's count of kept elements fits 16 bits");
        int16_t count = 0;
        for (int64_t k = j * BLOCK; k < stop; ++k) count += keep[k] != 0;
        total += count;
        before[j + 1] = total;
    }
    const int64_t blocks = std::max<int64_t>(1, (total + BLOCK - 1) / BLOCK);
    // The b-th start only needs before[] up to the input block holding it, and b BLOCK kept
    // elements lie at or after input block b: walking b upward, starts[b] overwrites an entry
    // of before[] that later starts no longer read.
    for (int64_t b = 1; b < blocks; ++b) {
        // the (b BLOCK)-th kept element: in input block j, after `rank` kept ones there
        const int64_t* at = std::upper_bound(before + b, before + chunks + 1, b * BLOCK);
        const int64_t j = (at - before) - 1;
        int64_t rank = b * BLOCK - before[j];
        int64_t k = j * BLOCK;
        while (k + GROUP <= n) {  // past whole groups holding no more than `rank` kept ones
            int16_t count = 0;    // (as the blocks' count)
            for (int64_t i = 0; i < GROUP; ++i) count += keep[k + i] != 0;
            if (count > rank) break;
            rank -= count;
            k += GROUP;
        }
        while (k < n && (rank != 0 || keep[k] == 0)) {  // (k < n: a mask changed meanwhile)
            rank -= keep[k] != 0;
            ++k;
        }
        starts[b] = k;
    }
    starts[0] = 0;
    starts[blocks] = n;
    *kept = total;
    return blocks;
}

template <class F>
void run_blocks(const Call<F>& c, int64_t first, int64_t last) {
    alignas(64) F xbuf[PIECE], ybuf[PIECE], wbuf[PIECE], pbuf[PIECE];
    alignas(64) F lbuf[PIECE], gbuf[PIECE], hbuf[PIECE];
    alignas(64) double wdbuf[PIECE], packed[PIECE + LANES], lanes[LANES], wlanes[LANES];
    const F zero = F(0);
    // Results go straight into outputs of the compute type: a second pass copying them from a
    // buffer would cost more than the math (caches and memory traffic).
    const auto place = [](const Output& o, int64_t start, F* buf) {
        return o.data != nullptr && o.type == storage_of<F>() ? static_cast<F*>(o.data) + start
                                                              : buf;
    };
    for (int64_t b = first; b < last; ++b) {
        std::fill(lanes, lanes + LANES, 0.0);
        std::fill(wlanes, wlanes + LANES, 0.0);
        int64_t kept = 0, wkept = 0, outside = 0;
        for (int64_t start = c.starts[b]; start < c.starts[b + 1]; start += PIECE) {
            const int64_t count = std::min(PIECE, c.starts[b + 1] - start);
            F* ls = place(c.out, start, lbuf);
            F* gs = place(c.gx, start, gbuf);
            F* hs = place(c.gy, start, hbuf);
            if (c.segment != nullptr) {
                const F* xs = view<F>(c.x, start, count, xbuf);
                const F* ys = view<F>(c.y, start, count, ybuf);
                const F* ws = c.w.data != nullptr ? view<F>(c.w, start, count, wbuf) : nullptr;
                const F* ps = c.p.data != nullptr ? view<F>(c.p, start, count, pbuf) : nullptr;
                c.segment(count, xs, ys, ws, ps, ls, gs, hs, c.options);
                if (c.outside != nullptr) {  // (all_in_unit_range's count, on values in cache)
                    int32_t piece = 0;       // (32 bits, as `segment`'s count of soft targets)
                    for (int64_t k = 0; k < count; ++k) piece += (xs[k] < zero) | (xs[k] > F(1));
                    outside += piece;
                }
            }
            const double* wds =
                c.wsums != nullptr ? view<double>(c.wd, start, count, wdbuf) : nullptr;
            if (c.keep != nullptr) {
                const uint8_t* kw = c.keep + start;
                if (c.sums != nullptr) kept = add_kept(lanes, ls, kw, count, kept, packed);
                if (c.wsums != nullptr) wkept = add_kept(wlanes, wds, kw, count, wkept, packed);
                // the elements the mask drops get 0, a gradient 0 / divisor (as the formula divides
                // its zeros)
                const F gzero = zero / c.options.divisor;
                for (int64_t k = 0; k < count; ++k) {
                    if (c.out.data != nullptr) ls[k] = kw[k] != 0 ? ls[k] : zero;
                    if (c.gx.data != nullptr) gs[k] = kw[k] != 0 ? gs[k] : gzero;
                    if (c.gy.data != nullptr) hs[k] = kw[k] != 0 ? hs[k] : gzero;
                }
            } else {
                if (c.sums != nullptr) add_lanes(lanes, ls, count);
                if (c.wsums != nullptr) add_lanes(wlanes, wds, count);
            }
            if (c.out.data != nullptr && ls == lbuf) encode(c.out, start, count, ls);
            if (c.gx.data != nullptr && gs == gbuf) encode(c.gx, start, count, gs);
            if (c.gy.data != nullptr && hs == hbuf) encode(c.gy, start, count, hs);
        }
        if (c.sums != nullptr) c.sums[b] = fold(lanes);
        if (c.wsums != nullptr) c.wsums[b] = fold(wlanes);
        if (c.outside != nullptr) c.outside[b] = outside;
    }
}

namespace {

// The cases each kind has a loop of its own for (the others would be copies of a loop):
// plain for logits, and for probabilities without d/dy (`segment`'s loop for targets of 0
// and 1); a flag for logits and focal.
template <class F, Kind K, int Grad, bool HasW, bool Flag>
Segment<F> pick_plain(bool plain) {
    if constexpr (K == Kind::logits || (K == Kind::probabilities && Grad < 2)) {
        if (plain) return &segment<F, K, Grad, HasW, Flag, true>;
    }
    return &segment<F, K, Grad, HasW, Flag, false>;
}

template <class F, Kind K, int Grad, bool HasW>
Segment<F> pick_flag(bool flag, bool plain) {
    if constexpr (K == Kind::probabilities) return pick_plain<F, K, Grad, HasW, false>(plain);
    return flag ? pick_plain<F, K, Grad, HasW, true>(plain)
                : pick_plain<F, K, Grad, HasW, false>(plain);
}

template <class F, Kind K, int Grad>
Segment<F> pick_weight(bool has_w, bool flag, bool plain) {
    return has_w ? pick_flag<F, K, Grad, true>(flag, plain)
                 : pick_flag<F, K, Grad, false>(flag, plain);
}

template <class F, Kind K>
Segment<F> pick_grad(int grad, bool has_w, bool flag, bool plain) {
    switch (grad) {
        case 0:
            return pick_weight<F, K, 0>(has_w, flag, plain);
        case 1:
            return pick_weight<F, K, 1>(has_w, flag, plain);
        default:
            return pick_weight<F, K, 2>(has_w, flag, plain);
    }
}

}  // namespace

template <class F>
Segment<F> segment_for(Kind kind, int grad, bool has_w, bool flag, bool plain) {
    switch (kind) {
        case Kind::logits:
            return pick_grad<F, Kind::logits>(grad, has_w, flag, plain);
        case Kind::probabilities:
            return pick_grad<F, Kind::probabilities>(grad, has_w, false, plain);
        default:
            return pick_grad<F, Kind::focal>(grad, has_w, flag, false);
    }
}

template void encode<float>(const Output&, int64_t, int64_t, const float*);
template void encode<double>(const Output&, int64_t, int64_t, const double*);
template Segment<float> segment_for<float>(Kind, int, bool, bool, bool);
template Segment<double> segment_for<double>(Kind, int, bool, bool, bool);
template void run_blocks<float>(const Call<float>&, int64_t, int64_t);
template void run_blocks<double>(const Call<double>&, int64_t, int64_t);

}  // namespace bceloss
