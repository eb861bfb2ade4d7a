"""Methods on one contract (`spec.MethodSpec`); `registry` lists them."""
