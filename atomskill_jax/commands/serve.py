"""`atomskill serve`: the websocket policy server (serving/PROTOCOL.md) for an exported
policy directory or a training workdir.

    atomskill serve --policy=P [--host=127.0.0.1 --port=8000] [--token=T]
    atomskill serve --workdir=W [--option epsilon=0.3]

Binds 127.0.0.1 unless told otherwise. The token may also come from the environment
(ATOMSKILL_SERVE_TOKEN). Clients that send no `language_embedding` get the instruction
of their `reset` embedded here (all-MiniLM-L6-v2, as the builders embed it), unless
--no-embed.
"""

from __future__ import annotations

import logging
import os

TOKEN_ENV = "ATOMSKILL_SERVE_TOKEN"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a policy over websockets (msgpack)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", help="exported policy directory (atomskill export)")
    which.add_argument("--workdir", help="training workdir (its latest checkpoint)")
    p.add_argument("--step", type=int, default=None, help="--workdir: checkpoint step")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help=f"shared token (or ${TOKEN_ENV})")
    p.add_argument("--max-message-bytes", type=int, default=4 * 2**20)
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a silent connection stays open")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most environments stacked into one model call")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--no-embed", action="store_true",
                   help="clients must send language_embedding themselves")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a runtime option of the method (JSON value); repeatable")


def make_server(args):
    from atomskill_jax.commands.export import parse_options
    from atomskill_jax.serving import policy_source
    from atomskill_jax.serving.server import PolicyServer

    options = parse_options(args.option)
    if args.policy:
        served = policy_source.from_exported(args.policy)
    else:
        served = policy_source.from_workdir(args.workdir, args.step)
    embed = None
    if not args.no_embed and "language_embedding" in served.settings["input_spec"]:
        from atomskill_jax.models import sentence_encoder

        def embed(text):
            return sentence_encoder.embed_texts_cached([text])[0]

    return PolicyServer(served, host=args.host, port=args.port,
                        token=args.token or os.environ.get(TOKEN_ENV),
                        max_message_bytes=args.max_message_bytes, idle_timeout=args.idle_timeout,
                        max_batch=args.max_batch, batching=not args.no_batching,
                        max_connections=args.max_connections, options=options, embed=embed)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = make_server(args)
    print(f"serving {server.served.method} policy {server.metadata['policy']!r} from "
          f"{server.served.source}; warming up, then listening on "
          f"ws://{args.host}:{args.port} (GET /healthz)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
