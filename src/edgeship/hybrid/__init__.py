"""Hybrid edge/cloud: a model cut into a head that runs on the device and a tail that runs on a
server, with the cut chosen from each layer's latency, the size of the tensor at the cut and the
link (``split``), and the tensor's encoding on the wire (``wire``)."""
