"""`nettrain serve`'s library: the HTTP app over a trained model, batching of concurrent requests on the way
to it, and the durable store of the feedback its clients send."""
