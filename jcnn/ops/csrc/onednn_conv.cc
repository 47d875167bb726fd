// oneDNN convolutions as XLA FFI handlers for the CPU platform.
//
// Four handlers, one per direction of a channels-last N-D convolution (d = 1, 2 or 3 spatial
// dims), float32 or bfloat16:
//
//   jcnn_onednn_conv_fwd          (x, k)        -> y     y  = conv(x, k)
//   jcnn_onednn_conv_fwd_bias     (x, k, b)     -> y     y  = conv(x, k) + b  (bias fused)
//   jcnn_onednn_conv_bwd_data     (dy, k)       -> dx    dx = conv's transpose in x, applied to dy
//   jcnn_onednn_conv_bwd_weights  (x, dy)       -> dk    dk = conv's transpose in k, applied to dy
//
// Layouts are what XLA hands over, never transposed here: activations (n, *spatial, c),
// kernels (*kernel, c // groups, c_out) (HWIO). Activations are described to oneDNN by their
// strides as they are; the weights are asked for in oneDNN's preferred layout
// (format_tag::any) and reordered on every call (and the kernel gradient reordered back),
// which measured fastest for forward + backward. Primitives are cached by geometry behind a
// mutex and executed with a per-thread user scratchpad, so concurrent calls are safe.
//
// Threads: oneDNN (GNU OpenMP build) runs each call on an OpenMP team of the calling thread,
// omp_get_max_threads() strong (OMP_NUM_THREADS, default the cores). Calls under
// kSerialFlops run on the calling thread alone: a team's barrier costs more than it saves there,
// and on an oversubscribed machine (more runnable threads than cores) a barrier can wait a whole
// scheduler slice for a descheduled teammate. The count is set with omp_set_num_threads around
// the primitive's creation and each execution and restored after, so the calling thread's own
// OpenMP setting (PyTorch's, the user's) is left as it was.
//
// The handler does one thing; shapes, dtypes and autodiff are checked and derived in Python
// (jcnn/ops/onednn.py). Attributes: strides, padding_lo, padding_hi, dilation (d int64 each),
// groups (int64).
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using dims = dnnl::memory::dims;

namespace {

enum Kind : int64_t { kFwd = 0, kFwdBias = 1, kBwdData = 2, kBwdWeights = 3 };

// Multiply-adds x 2 of the forward conv below which a call runs single-threaded.
constexpr double kSerialFlops = 64e6;

// Everything that determines a primitive. Activations (n, *in, c) -> (n, *out, o);
// kernel (*k, c / groups, o).
struct Geometry {
  int64_t kind = 0, dtype = 0, d = 0, n = 0, c = 0, o = 0, groups = 1;
  int64_t in[3] = {}, out[3] = {}, k[3] = {}, stride[3] = {}, lo[3] = {}, hi[3] = {}, dil[3] = {};

  std::string key() const { return std::string(reinterpret_cast<const char*>(this), sizeof(*this)); }
};

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

memory::data_type data_type(int64_t dtype) {
  return dtype == static_cast<int64_t>(ffi::DataType::BF16) ? memory::data_type::bf16
                                                            : memory::data_type::f32;
}

// (n, ch, *spatial) as oneDNN's logical dims, physically (n, *spatial, ch): channels last.
memory::desc activation_desc(const Geometry& g, int64_t ch, const int64_t* spatial) {
  dims shape{g.n, ch}, strides{0, 1};
  int64_t step = ch;
  for (int64_t i = 0; i < g.d; ++i) shape.push_back(spatial[i]);
  strides.resize(shape.size());
  for (int64_t i = g.d - 1; i >= 0; --i) {
    strides[2 + i] = step;
    step *= spatial[i];
  }
  strides[0] = step;
  return memory::desc(shape, data_type(g.dtype), strides);
}

// Logical (o, cg, *k) or, with groups, (groups, o / groups, cg, *k); physically (*k, cg, o).
memory::dims weight_dims(const Geometry& g) {
  const int64_t cg = g.c / g.groups;
  dims shape = g.groups > 1 ? dims{g.groups, g.o / g.groups, cg} : dims{g.o, cg};
  for (int64_t i = 0; i < g.d; ++i) shape.push_back(g.k[i]);
  return shape;
}

memory::desc weight_user_desc(const Geometry& g) {
  const int64_t cg = g.c / g.groups;
  dims strides = g.groups > 1 ? dims{g.o / g.groups, 1, g.o} : dims{1, g.o};
  const size_t lead = strides.size();
  strides.resize(lead + g.d);
  int64_t step = cg * g.o;
  for (int64_t i = g.d - 1; i >= 0; --i) {
    strides[lead + i] = step;
    step *= g.k[i];
  }
  return memory::desc(weight_dims(g), data_type(g.dtype), strides);
}

memory::desc weight_any_desc(const Geometry& g) {
  return memory::desc(weight_dims(g), data_type(g.dtype), memory::format_tag::any);
}

// One cached primitive with the descriptors of its arguments: what the caller's buffers are
// (user) and what the primitive wants (prim); the two differ only for the weights.
struct Plan {
  int threads = 1;  // the OpenMP team size it was created for and runs with
  dnnl::primitive prim;
  int args[4] = {};        // DNNL_ARG_* of inputs 0..n_in-1, then of the output
  memory::desc user[4], want[4];
  int n_in = 0;
  size_t scratch = 0;
};

// The OpenMP thread count of the calling thread set for one scope, then restored.
class Threads {
 public:
  explicit Threads(int n) : saved_(omp_get_max_threads()) {
    if (n != saved_) omp_set_num_threads(n);
  }
  ~Threads() {
    if (omp_get_max_threads() != saved_) omp_set_num_threads(saved_);
  }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;

 private:
  int saved_;
};

double forward_flops(const Geometry& g) {
  double f = 2.0 * g.n * g.o * (g.c / g.groups);
  for (int64_t i = 0; i < g.d; ++i) f *= static_cast<double>(g.out[i]) * g.k[i];
  return f;
}

std::shared_ptr<Plan> build(const Geometry& g, int threads) {
  Threads scope(threads);
  const memory::desc src = activation_desc(g, g.c, g.in);
  const memory::desc dst = activation_desc(g, g.o, g.out);
  const memory::desc wei_user = weight_user_desc(g);
  const memory::desc wei_any = weight_any_desc(g);
  const memory::desc bias(dims{g.o}, data_type(g.dtype), memory::format_tag::a);
  dims strides, dil, lo, hi;
  for (int64_t i = 0; i < g.d; ++i) {
    strides.push_back(g.stride[i]);
    dil.push_back(g.dil[i] - 1);  // oneDNN counts dilation from 0
    lo.push_back(g.lo[i]);
    hi.push_back(g.hi[i]);
  }
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = dnnl::algorithm::convolution_direct;
  auto plan = std::make_shared<Plan>();
  plan->threads = threads;
  auto fill = [&](const auto& pd, std::initializer_list<int> ids, std::initializer_list<memory::desc> user,
                  std::initializer_list<memory::desc> want) {
    int i = 0;
    for (int id : ids) plan->args[i++] = id;
    plan->n_in = i - 1;
    i = 0;
    for (const auto& m : user) plan->user[i++] = m;
    i = 0;
    for (const auto& m : want) plan->want[i++] = m;
    plan->scratch = pd.scratchpad_desc().get_size();
  };
  if (g.kind == kFwd || g.kind == kFwdBias) {
    const auto prop = dnnl::prop_kind::forward_training;  // same kernels as inference, no extras
    auto pd = g.kind == kFwdBias ? dnnl::convolution_forward::primitive_desc(
                                       engine(), prop, algo, src, wei_any, bias, dst, strides, dil, lo, hi, attr)
                                 : dnnl::convolution_forward::primitive_desc(
                                       engine(), prop, algo, src, wei_any, dst, strides, dil, lo, hi, attr);
    plan->prim = dnnl::convolution_forward(pd);
    if (g.kind == kFwdBias)
      fill(pd, {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST}, {src, wei_user, bias, dst},
           {pd.src_desc(), pd.weights_desc(), pd.bias_desc(), pd.dst_desc()});
    else
      fill(pd, {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST}, {src, wei_user, dst},
           {pd.src_desc(), pd.weights_desc(), pd.dst_desc()});
    return plan;
  }
  // The backward primitives take a forward primitive descriptor as a hint.
  auto hint = dnnl::convolution_forward::primitive_desc(engine(), dnnl::prop_kind::forward_training, algo, src,
                                                        wei_any, dst, strides, dil, lo, hi);
  if (g.kind == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(engine(), algo, src, wei_any, dst, strides, dil, lo,
                                                              hi, hint, attr);
    plan->prim = dnnl::convolution_backward_data(pd);
    fill(pd, {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC}, {dst, wei_user, src},
         {pd.diff_dst_desc(), pd.weights_desc(), pd.diff_src_desc()});
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(engine(), algo, src, wei_any, dst, strides, dil,
                                                                 lo, hi, hint, attr);
    plan->prim = dnnl::convolution_backward_weights(pd);
    fill(pd, {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS}, {src, dst, wei_user},
         {pd.src_desc(), pd.diff_dst_desc(), pd.diff_weights_desc()});
  }
  return plan;
}

std::mutex plans_mutex;
std::unordered_map<std::string, std::shared_ptr<Plan>> plans;

std::shared_ptr<Plan> plan_for(const Geometry& g) {
  // The team size is part of the key: the caller's OpenMP setting may differ between threads.
  const int threads = forward_flops(g) < kSerialFlops ? 1 : omp_get_max_threads();
  const std::string key = g.key() + std::to_string(threads);
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  auto plan = build(g, threads);  // outside the lock: oneDNN's JIT compile takes milliseconds
  std::lock_guard<std::mutex> lock(plans_mutex);
  return plans.emplace(key, plan).first->second;
}

// Per-thread buffers (scratchpad and reordered weights) reused across calls: XLA runs
// handlers on several threads at once, each gets its own.
struct Buffers {
  std::vector<char> scratch, reordered[4];
};
thread_local Buffers buffers;

char* grown(std::vector<char>& v, size_t size) {
  if (v.size() < size) v.resize(size);
  return v.data();
}

void execute(const Geometry& g, void* const* inputs, void* output) {
  const std::shared_ptr<Plan> plan = plan_for(g);
  Threads scope(plan->threads);
  dnnl::stream stream(engine());
  std::unordered_map<int, memory> args;
  const int n = plan->n_in + 1;
  memory out_user, out_want;
  for (int i = 0; i < n; ++i) {
    const bool is_output = i == plan->n_in;
    memory user(plan->user[i], engine(), is_output ? output : inputs[i]);
    memory want = user;
    if (plan->want[i] != plan->user[i]) {
      want = memory(plan->want[i], engine(), grown(buffers.reordered[i], plan->want[i].get_size()));
      if (!is_output) dnnl::reorder(user, want).execute(stream, user, want);
    }
    if (is_output) {
      out_user = user;
      out_want = want;
    }
    args[plan->args[i]] = want;
  }
  args[DNNL_ARG_SCRATCHPAD] =
      memory(memory::desc(dims{static_cast<int64_t>(plan->scratch)}, memory::data_type::u8, memory::format_tag::a),
             engine(), grown(buffers.scratch, plan->scratch));
  plan->prim.execute(stream, args);
  if (plan->want[plan->n_in] != plan->user[plan->n_in]) dnnl::reorder(out_want, out_user).execute(stream, out_want, out_user);
  stream.wait();
}

ffi::Error invalid(const std::string& what) { return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jcnn oneDNN conv: " + what); }

// Geometry from the buffers: (a, b) -> r per kind, see the top of the file.
ffi::Error geometry(int64_t kind, const ffi::AnyBuffer& a, const ffi::AnyBuffer& b, const ffi::AnyBuffer::Dimensions& r,
                    ffi::DataType rtype, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo,
                    ffi::Span<const int64_t> hi, ffi::Span<const int64_t> dil, int64_t groups, Geometry* g) {
  const auto ad = a.dimensions(), bd = b.dimensions();
  const int64_t rank = static_cast<int64_t>(ad.size());
  const int64_t d = rank - 2;
  if (d < 1 || d > 3 || static_cast<int64_t>(bd.size()) != rank || static_cast<int64_t>(r.size()) != rank)
    return invalid("operands must all have rank 3, 4 or 5 (one batch dim, 1-3 spatial dims, channels)");
  if (static_cast<int64_t>(strides.size()) != d || static_cast<int64_t>(lo.size()) != d ||
      static_cast<int64_t>(hi.size()) != d || static_cast<int64_t>(dil.size()) != d)
    return invalid("strides, padding and dilation need one entry per spatial dim");
  if (a.element_type() != b.element_type() || a.element_type() != rtype ||
      (rtype != ffi::DataType::F32 && rtype != ffi::DataType::BF16))
    return invalid("operands must all be float32 or all bfloat16");
  if (groups < 1) return invalid("groups must be >= 1");
  g->kind = kind;
  g->dtype = static_cast<int64_t>(rtype);
  g->d = d;
  g->groups = groups;
  // Which buffer holds which role.
  const ffi::AnyBuffer::Dimensions& x = kind == kBwdData ? r : ad;
  const ffi::AnyBuffer::Dimensions& y = kind == kBwdData ? ad : (kind == kBwdWeights ? bd : r);
  const ffi::AnyBuffer::Dimensions& k = kind == kBwdWeights ? r : bd;
  g->n = x[0];
  g->c = x[d + 1];
  g->o = y[d + 1];
  if (y[0] != g->n || k[d + 1] != g->o || k[d] * groups != g->c || g->o % groups != 0)
    return invalid("batch, channel or group counts of the operands do not agree");
  for (int64_t i = 0; i < d; ++i) {
    g->in[i] = x[1 + i];
    g->out[i] = y[1 + i];
    g->k[i] = k[i];
    g->stride[i] = strides[i];
    g->lo[i] = lo[i];
    g->hi[i] = hi[i];
    g->dil[i] = dil[i];
  }
  return ffi::Error::Success();
}

ffi::Error guarded(const Geometry& g, void* const* inputs, void* output) {
  try {
    execute(g, inputs, output);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jcnn oneDNN conv: oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jcnn oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Conv2(int64_t kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> r,
                 ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi,
                 ffi::Span<const int64_t> dil, int64_t groups) {
  Geometry g;
  ffi::Error err = geometry(kind, a, b, r->dimensions(), r->element_type(), strides, lo, hi, dil, groups, &g);
  if (err.failure()) return err;
  void* inputs[2] = {a.untyped_data(), b.untyped_data()};
  return guarded(g, inputs, r->untyped_data());
}

ffi::Error Fwd(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, ffi::Span<const int64_t> dil, int64_t groups) {
  return Conv2(kFwd, x, k, y, strides, lo, hi, dil, groups);
}

ffi::Error BwdData(ffi::AnyBuffer dy, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, ffi::Span<const int64_t> dil,
                   int64_t groups) {
  return Conv2(kBwdData, dy, k, dx, strides, lo, hi, dil, groups);
}

ffi::Error BwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dk,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi,
                      ffi::Span<const int64_t> dil, int64_t groups) {
  return Conv2(kBwdWeights, x, dy, dk, strides, lo, hi, dil, groups);
}

ffi::Error FwdBias(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi,
                   ffi::Span<const int64_t> dil, int64_t groups) {
  Geometry g;
  ffi::Error err = geometry(kFwdBias, x, k, y->dimensions(), y->element_type(), strides, lo, hi, dil, groups, &g);
  if (err.failure()) return err;
  const auto bd = bias.dimensions();
  if (bias.element_type() != y->element_type() || bd.size() != 1 || bd[0] != g.o)
    return invalid("the bias must be (c_out,) of the operands' dtype");
  void* inputs[3] = {x.untyped_data(), k.untyped_data(), bias.untyped_data()};
  return guarded(g, inputs, y->untyped_data());
}

#define JCNN_CONV_ATTRS                                                                                  \
  .Attr<ffi::Span<const int64_t>>("strides")                                                            \
      .Attr<ffi::Span<const int64_t>>("padding_lo")                                                     \
      .Attr<ffi::Span<const int64_t>>("padding_hi")                                                     \
      .Attr<ffi::Span<const int64_t>>("dilation")                                                       \
      .Attr<int64_t>("groups")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvFwd, Fwd,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvFwdBias, FwdBias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvBwdData, BwdData,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvBwdWeights, BwdWeights,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JCNN_CONV_ATTRS);

// Plain C entry points for jcnn.ops.onednn (ctypes): versions, and whether a dtype has a real
// (non-reference) kernel on this CPU.
extern "C" {

// The XLA FFI API version these handlers were compiled against, major * 1000 + minor.
int64_t jcnn_onednn_ffi_api_version() { return XLA_FFI_API_MAJOR * 1000 + XLA_FFI_API_MINOR; }

// oneDNN's version, major * 10000 + minor * 100 + patch.
int64_t jcnn_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// The implementation oneDNN picks for a small 2-D forward conv in this dtype (11 = f32,
// 16 = bf16, XLA's numbering), e.g. "brg_conv_fwd:avx512_core"; "" if it cannot make one.
// A name starting with "ref" means no optimised kernel: jcnn then does not use that dtype.
const char* jcnn_onednn_probe(int64_t dtype) {
  static thread_local std::string name;
  try {
    Geometry g;
    g.kind = kFwd;
    g.dtype = dtype;
    g.d = 2;
    g.n = 2;
    g.c = 16;
    g.o = 16;
    for (int i = 0; i < 2; ++i) {
      g.in[i] = g.out[i] = 8;
      g.k[i] = 3;
      g.stride[i] = g.dil[i] = g.lo[i] = g.hi[i] = 1;
    }
    memory::desc src = activation_desc(g, g.c, g.in), dst = activation_desc(g, g.o, g.out);
    dnnl::convolution_forward::primitive_desc pd(engine(), dnnl::prop_kind::forward_training,
                                                 dnnl::algorithm::convolution_direct, src, weight_any_desc(g), dst,
                                                 dims{1, 1}, dims{0, 0}, dims{1, 1}, dims{1, 1});
    name = pd.impl_info_str();
  } catch (const std::exception&) {
    name.clear();
  }
  return name.c_str();
}

// How many primitives are cached (for tests of the cache).
int64_t jcnn_onednn_cached_plans() {
  std::lock_guard<std::mutex> lock(plans_mutex);
  return static_cast<int64_t>(plans.size());
}
}
