"""What every stage of escoin-tvm uses and none of them owns: dtypes, targets and devices, the
exchange of tensors with TVM, timing, TVM's log output and compile progress."""
