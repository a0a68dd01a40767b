// A CUPTI injection library that records every kernel the process runs, graph replays included, with the GPU's
// own start and end timestamps, so that the time of a replayed decode step can be read kernel by kernel with its
// programmatic (PDL) overlap and its two streams intact (an event node per op, llama4-bench's timeline, costs
// each op its PDL edge). Loaded by the driver at context creation:
//   CUDA_INJECTION64_PATH=libl4k_trace.so L4K_TRACE=trace.csv llama4-bench ...
// then bench/trace/step_trace.py reads the CSV. Built by scripts/build-trace.sh against the CUPTI wheel's
// headers (nothing in the library links it).
//
// One CSV line per kernel: start and end (ns, device clock), stream, graph id and node id (0 outside graphs), the
// correlation id (one per launch API call: every kernel of one graph launch shares it), grid and block sizes,
// the mangled name.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE* out;

#define CHECK(call)                                                                       \
  do {                                                                                    \
    CUptiResult r_ = (call);                                                              \
    if (r_ != CUPTI_SUCCESS) {                                                            \
      const char* s_ = "?";                                                               \
      cuptiGetResultString(r_, &s_);                                                      \
      fprintf(stderr, "l4k_trace: %s: %s\n", #call, s_);                                  \
      return 0;                                                                           \
    }                                                                                     \
  } while (0)

enum { kBufferBytes = 8 << 20 };

static void CUPTIAPI requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  // CUPTI wants 8-byte aligned buffers.
  *buffer = (uint8_t*)aligned_alloc(8, kBufferBytes);
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t size, size_t valid) {
  (void)ctx, (void)stream, (void)size;
  CUpti_Activity* rec = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const CUpti_ActivityKernel10* k = (const CUpti_ActivityKernel10*)rec;
    fprintf(out, "%llu,%llu,%u,%u,%llu,%u,%d,%d,%d,%d,%s\n", (unsigned long long)k->start,
            (unsigned long long)k->end, k->streamId, k->graphId, (unsigned long long)k->graphNodeId,
            k->correlationId, k->gridX, k->gridY, k->gridZ, k->blockX, k->name ? k->name : "?");
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS && dropped)
    fprintf(stderr, "l4k_trace: %zu records dropped\n", dropped);
  free(buffer);
}

static void flush(void) {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  if (out) fflush(out);
}

// The driver calls this once, at the first context's creation, when CUDA_INJECTION64_PATH names the library.
int InitializeInjection(void) {
  const char* path = getenv("L4K_TRACE");
  out = fopen(path ? path : "l4k-trace.csv", "w");
  if (!out) {
    perror("l4k_trace: L4K_TRACE");
    return 0;
  }
  fprintf(out, "start,end,stream,graph,node,correlation,grid_x,grid_y,grid_z,block_x,name\n");
  CHECK(cuptiActivityRegisterCallbacks(requested, completed));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
  atexit(flush);
  return 1;
}
