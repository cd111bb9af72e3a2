"""How the closed form is computed: `dense` (kernels as matrices, one eigendecomposition)
and `krylov` (kernel-vector products only), on every device JAX sees."""
