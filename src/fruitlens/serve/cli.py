"""`fruitlens serve OUTPUT`: options → one ServeConfig → uvicorn running the app (one process).

Settings come from a YAML file (``--config``, ``FRUITLENS_SERVE_CONFIG``) < the environment
(``FRUITLENS_SERVE_<FIELD>``, e.g. ``FRUITLENS_SERVE_MAX_BATCH``) < the command line, merged as the
pipeline's are (:func:`fruitlens.config.merge_sources`) into the one :class:`ServeConfig`.

Also the image's entry point (``python -m fruitlens.serve``), which must not import the other commands'
modules (Spark, cloud clients): :func:`main` parses with its own parser.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fruitlens.errors import FruitlensError

HELP = "answer photos over HTTP with OUTPUT's predictor: API, web page, metrics (no Spark, no TensorFlow)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags; every default is None ("not given"), so the environment, the file or ServeConfig decides."""
    p.add_argument("output", metavar="OUTPUT", help="a trained output (local folder or s3:// URI); newer "
                   "models trained into it are swapped in while serving")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default 8080; 0: any free port)")
    p.add_argument("--keep-uploads", metavar="URI", help="keep each photo once under URI/<label>/ (local or "
                   "s3://), so the next `fruitlens run` on that INPUT grows the data set")
    p.add_argument("--allow-new-labels", action="store_true", default=None,
                   help="feedback may name labels the model lacks")
    p.add_argument("--max-batch", type=int, help="photos per engine call (default 32)")
    p.add_argument("--batch-wait-ms", type=float, help="how long a photo waits for others "
                   "while the engine is idle (default 2)")
    p.add_argument("--max-queue", type=int, help="photos waiting for the engine before "
                   "requests get 503 + Retry-After (default 128)")
    p.add_argument("--queue-timeout", dest="queue_timeout_s", type=float, metavar="SECONDS",
                   help="a photo waiting longer for the engine is answered 503 (default 10)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, help="largest photo, width x height as "
                   "declared, refused before decoding (default 50e6)")
    p.add_argument("--max-photos", type=int, help="photos in one multipart request (default 16)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: the CPUs this "
                   "process may use, cgroup quota included)")
    p.add_argument("--decode-threads", type=int, help="photo decoding threads (default: as --threads)")
    p.add_argument("--poll-seconds", dest="poll_s", type=float, metavar="SECONDS",
                   help="how often OUTPUT is checked for a newer model (default 10)")
    p.add_argument("--top-k", type=int, help="labels in each answer's top (default 3)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--config", dest="config_file", metavar="FILE", help="YAML file of these settings (the "
                   "field names of fruitlens.serve.config.ServeConfig); lowest precedence, then the "
                   "environment's FRUITLENS_SERVE_<FIELD>, then these flags")


ENV_PREFIX = "FRUITLENS_SERVE_"


def config_from(ns: argparse.Namespace, env=None):
    """YAML < environment < command line (None: not given) → the one validated :class:`ServeConfig`."""
    import dataclasses
    import os

    from fruitlens.config import ConfigError, merge_sources
    from fruitlens.serve.config import ServeConfig, ServeConfigError

    env = os.environ if env is None else env
    cli = {f.name: getattr(ns, f.name, None) for f in dataclasses.fields(ServeConfig)}
    try:
        merged = merge_sources(ServeConfig, cli=cli, env=env, env_prefix=ENV_PREFIX,
                               file=getattr(ns, "config_file", None) or env.get(f"{ENV_PREFIX}CONFIG"),
                               file_label="serve config file", file_hint=f"fix --config or {ENV_PREFIX}CONFIG",
                               merge_keys=())
    except ConfigError as exc:
        raise ServeConfigError(str(exc)) from None
    return ServeConfig(**merged)


def run(ns: argparse.Namespace) -> int:
    import logging

    try:
        import uvicorn

        from fruitlens.serve.app import create_app
    except ModuleNotFoundError as exc:
        raise FruitlensError(f"`fruitlens serve` needs {exc.name}: pip install 'fruitlens[serve]'") from None
    config = config_from(ns)
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uploads = None
    if config.keep_uploads:
        from fruitlens.serve.uploads import UploadStore

        uploads = UploadStore.open(config)
    app = create_app(config, uploads=uploads)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=ns.log_level, access_log=False,
        timeout_graceful_shutdown=20, limit_concurrency=1024, server_header=False, lifespan="on"))
    server.run()
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help=HELP)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitlens serve", description=HELP)
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        return run(ns)
    except FruitlensError as exc:
        print(f"fruitlens: error: {exc}", file=sys.stderr)
        return exc.exit_code
