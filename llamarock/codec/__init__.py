"""AWS wire codec: botocore's service models drive header parsing and error rendering; event-stream framing."""
