"""`fruitlens serve`: the trained predictor over HTTP (an ASGI app on Starlette + uvicorn).

Imports nothing heavy here: `fruitlens --help` registers the command without loading the stack.
Only numpy, Pillow, ONNX Runtime and pyarrow (OUTPUT/uploads through :mod:`fruitlens.storage.store`)
run in the service: no Spark, no JVM, no TensorFlow, no boto3 (see docs/serving.md).
"""
