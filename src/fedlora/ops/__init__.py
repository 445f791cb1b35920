"""Pure tensor maths: tensors in, tensors out; no nn.Module, no I/O, no higher layers."""
