"""The slave chain: block construction (pure) and the block producer (I/O)."""
