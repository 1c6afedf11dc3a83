"""Network frontends: gRPC, HTTP and metrics, plus the codec and request checks they share."""
