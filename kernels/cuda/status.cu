// Status codes and the thread-local last-error message of the CUDA library: the CPU library's
// kernels/cpu/status.cpp, compiled into this library too (one source; each library keeps its
// own thread-local message).
#include "../cpu/status.cpp"
