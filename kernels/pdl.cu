// The programmatic-dependent-launch switch of kernels/pdl.cuh, exported for the Rust side
// (llama4_kernels::device::pdl_enabled and the tests' set_pdl).
#include "pdl.cuh"

// Overrides L4K_PDL for every later launch in the process: 0 launches without the attribute, anything else with.
extern "C" void l4k_internal_set_pdl(int on) { l4k::pdl_switch().store(on != 0 ? 1 : 0, std::memory_order_relaxed); }

// 1 when launches carry the PDL attribute (reads L4K_PDL on first use, as a launch would).
extern "C" int l4k_internal_pdl_enabled(void) { return l4k::pdl_enabled() ? 1 : 0; }
