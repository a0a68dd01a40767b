// Host-only check of the SwiGLU epilogue's assumption (kernels/grouped_gemm.cu, SwigluPairBytes): in both SwiGLU
// configurations, elements 2j and 2j + 1 of every thread's epilogue view of the accumulators sit on columns
// (2c, 2c + 1) of one row, and the fragment size divides that view. Runs on the CPU (CuTe layouts only):
//   nvcc -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels \
//     -I<cuda>/include -I<cutlass>/include -o /tmp/pairs bench/experiments/grouped_gemm_swiglu_pairs.cu && /tmp/pairs
// Last run: 12288 (128x192 tiles) and 16384 (256x128) pairs checked, 0 bad (128x128, before: 8192).
#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "grouped_gemm.cu"
#include <cstdio>
using namespace cute;
template <class C>
int check(const char* name) {
  using Epi = typename C::Epilogue;
  using TiledMma = typename C::Mainloop::TiledMma;
  using Tile = typename C::Kernel::TileShape;
  TiledMma mma;
  auto atom = make_tiled_copy_C_atom(typename Epi::CopyAtomC{}, mma);
  auto r2s = make_tiled_copy_S(Copy_Atom<typename Epi::CopyOpR2S, uint8_t>{}, atom);
  constexpr int frag = size(typename Epi::EpilogueTile{}) / 256;
  int bad = 0, checked = 0;
  for (int t = 0; t < size(mma); ++t) {
    Tensor c = make_identity_tensor(take<0, 2>(Tile{}));
    Tensor acc = mma.get_slice(t).partition_C(c);
    Tensor rs = r2s.get_slice(t).retile_S(acc);
    for (int i = 0; i + 1 < size(rs); i += 2) {
      auto a = rs(i), b = rs(i + 1);
      ++checked;
      if (!(get<0>(a) == get<0>(b) && get<1>(a) % 2 == 0 && get<1>(b) == get<1>(a) + 1)) {
        if (bad++ < 5) printf("%s: thread %d elems %d,%d at (%d,%d) (%d,%d)\n", name, t, i, i + 1, (int)get<0>(a), (int)get<1>(a), (int)get<0>(b), (int)get<1>(b));
      }
    }
    if (t == 0) { printf("%s: frag %d, mode0 size %d, total %d; thread 0 first 8: ", name, frag, (int)size<0>(rs), (int)size(rs)); for (int i = 0; i < 8; ++i) printf("(%d,%d) ", (int)get<0>(rs(i)), (int)get<1>(rs(i))); printf("\n"); }
  }
  printf("%s: %d pairs checked, %d bad; FragmentSize %d divides mode 0: %d\n", name, checked, bad, frag, (int)(size<0>(decltype(r2s.get_slice(0).retile_S(mma.get_slice(0).partition_C(make_identity_tensor(take<0,2>(Tile{}))))){}.layout()) % frag == 0));
  return bad;
}
int main() {
  int bad = check<l4k::grouped_gemm::PrefillSwiglu>("PrefillSwiglu");
  bad += check<l4k::grouped_gemm::PrefillFastAccumSwiglu>("PrefillFastAccumSwiglu");
  return bad != 0;
}
