"""Options naming a petrel (or any S3) endpoint and its keys, shared by the commands
that talk to a running gateway: flags, then environment, then ~/petreloss.conf."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from petrel.loadgen import Target


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("endpoint")
    where.add_argument("--endpoint", default=os.environ.get("PETREL_ENDPOINT"),
                       help="http://HOST:PORT (env PETREL_ENDPOINT; default: host_base of "
                            "the cluster in ~/petreloss.conf)")
    where.add_argument("--access-key", default=os.environ.get("PETREL_ACCESS_KEY"),
                       help="env PETREL_ACCESS_KEY; default: from petreloss.conf")
    where.add_argument("--secret-key", default=os.environ.get("PETREL_SECRET_KEY"),
                       help="env PETREL_SECRET_KEY; default: from petreloss.conf")
    where.add_argument("--region", default="us-east-1")
    where.add_argument("--conf", help="petreloss.conf to take the endpoint and keys from")
    where.add_argument("--cluster", help="cluster section of petreloss.conf")


def target_from_args(args: argparse.Namespace) -> Target:
    """The endpoint and keys; raises ValueError (ConfigError) when they are incomplete."""
    from petrel.loadgen import Target

    endpoint, access, secret = args.endpoint, args.access_key, args.secret_key
    if args.conf or args.cluster or not (endpoint and access and secret):
        from petrel.client import load_cluster

        cluster = load_cluster(args.conf, args.cluster)
        endpoint = endpoint or cluster.host_base
        access = access or cluster.access_key
        secret = secret or cluster.secret_key
    target = Target(endpoint.rstrip("/"), access, secret, args.region)
    target.host_port  # noqa: B018 - raises ValueError for a malformed endpoint
    return target
