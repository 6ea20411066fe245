from nettrain.cli import entrypoint

entrypoint()
