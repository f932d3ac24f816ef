/* The sparse teacher's student passes (sparse_rows.h) for float32 and float64 inputs, on one
 * target; included by target_impl.h after rows_impl.h's helpers. (2-byte students reach them
 * as float32 blocks: kdloss._sparse converts.) */
#define KD_SPARSE_FN(name) KD_CAT(name, f32)
#define KD_REAL float
#define KD_OUT float
#define KD_NATIVE_RANGE 1
#define KD_EXP_FOR_DOUBLE 0
#define KD_LOAD kd_load_f32
#define KD_LOAD_PARTIAL kd_load_partial_f32
#include "sparse_rows.h"
#undef KD_SPARSE_FN
#undef KD_REAL
#undef KD_OUT
#undef KD_EXP_FOR_DOUBLE
#undef KD_LOAD
#undef KD_LOAD_PARTIAL

#define KD_SPARSE_FN(name) KD_CAT(name, f64)
#define KD_REAL double
#define KD_OUT double
#define KD_EXP_FOR_DOUBLE 1
#define KD_LOAD kd_load_f64
#define KD_LOAD_PARTIAL kd_load_partial_f64
#include "sparse_rows.h"
#undef KD_SPARSE_FN
#undef KD_REAL
#undef KD_OUT
#undef KD_NATIVE_RANGE
#undef KD_EXP_FOR_DOUBLE
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
