"""Secure aggregation (SecAgg+, Bell et al. 2020, after Bonawitz et al. 2017): the server
learns the sum of the surviving clients' vectors and nothing else of any one of them.

This module is the protocol's state on both sides, independent of the transport: four
exchanges per round, each a request from the server and replies from the clients.

0. **Keys.** Each sampled client makes two key pairs (one to agree masks, one to encrypt
   shares) and sends the public halves.
1. **Shares.** The server sends each client its neighbours' public keys (a ring of
   ``num_shares`` around it, the client included). The client draws a 32-byte seed for its
   own mask, splits the seed and its mask-agreement private key into Shamir shares
   (``threshold`` of them rebuild either) and sends each neighbour its shares encrypted
   under a key agreed with that neighbour.
2. **Masked vectors.** The server forwards the encrypted shares. Each client adds to its
   fixed-point vector the mask expanded from its own seed and, for every neighbour that sent
   shares, the mask expanded from their agreed secret, added toward a higher id and subtracted
   toward a lower one: pairwise masks cancel in the sum.
3. **Unmask.** The server names which neighbours sent a masked vector (alive) and which
   shared keys but did not (dropped). A client returns its shares of each alive neighbour's
   seed and of each dropped neighbour's private key, never both for one node. With
   ``threshold`` shares of each, the server removes the alive clients' own masks and rebuilds
   the pairwise masks the dropped ones left behind.

Key agreement (ECDH on SECP384R1 with HKDF-SHA256), Shamir sharing (pycryptodome) and
authenticated encryption (Fernet) are Flower's (``flwr.common.secure_aggregation``,
``flwr.supercore.primitives``); masks are ChaCha20 expansions of the whole agreed secret
(:mod:`fedlora.runtime.masking`), not Flower's 32-bit folded MT19937.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.fernet import InvalidToken
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedlora.runtime.masking import add_mod, expand_mask, sub_mod, word_dtype

PublicKeys = tuple[bytes, bytes]
"""A client's public keys: mask agreement, share encryption."""


class SecAggError(ValueError):
    """A protocol message that breaks the rules (raised on the side that receives it)."""


def neighbour_ring(
    ids: Sequence[int], num_shares: int, rng: random.Random
) -> dict[int, frozenset[int]]:
    """Each id's neighbours (itself included): the ids within ``num_shares // 2`` places of it
    on a ring in a random order (``num_shares`` rounded up to odd; all ids when it reaches
    ``len(ids)``); symmetric by construction."""
    order = list(ids)
    rng.shuffle(order)
    count = len(order)
    if num_shares >= count:
        return {nid: frozenset(order) for nid in order}
    half = num_shares // 2
    return {
        nid: frozenset(order[(i + d) % count] for d in range(-half, half + 1))
        for i, nid in enumerate(order)
    }


COMMIT_LABEL = b"fedlora secure aggregation seed commitment v1"
MAX_TRIES = 1000
"""Subsets of shares the server tries per secret before it gives the secret up."""


def commitment(seed: bytes) -> bytes:
    """What a client sends of its mask seed (its hash: nothing of the seed)."""
    return hashlib.sha256(COMMIT_LABEL + seed).digest()


def rebuild(shares: Sequence[bytes], threshold: int, valid: Callable[[bytes], bool]) -> bytes:
    """The secret that ``threshold`` of ``shares`` rebuild and ``valid`` accepts, trying
    subsets in turn (a lying client's share spoils the subsets holding it, not the others);
    ``SecAggError`` when none of the first :data:`MAX_TRIES` does."""
    for subset in itertools.islice(itertools.combinations(shares, threshold), MAX_TRIES):
        try:
            secret = combine_shares(list(subset))
        except Exception:  # garbage shares: the next subset
            continue
        if valid(secret):
            return secret
    raise SecAggError(f"no {threshold} of its {len(shares)} shares rebuild its secret")


def _public_of(private_pem: bytes) -> bytes:
    try:
        return public_key_to_bytes(bytes_to_private_key(private_pem).public_key())
    except Exception:
        return b""


def _agreed(private_pem: bytes, public_pem: bytes) -> bytes:
    return generate_shared_key(bytes_to_private_key(private_pem), bytes_to_public_key(public_pem))


@dataclass
class SecAggClient:
    """One client's side of one round: its keys, its seed, the shares it holds. Built by
    :meth:`start`; :meth:`to_record` / :meth:`from_record` carry it between the messages of a
    round as plain integers and bytes (a Flower node runs each message in a fresh process)."""

    nid: int
    threshold: int
    bits: int
    sk1: bytes = field(repr=False)
    sk2: bytes = field(repr=False)
    keys: PublicKeys
    seed: bytes = field(default=b"", repr=False)
    neighbour_keys: dict[int, PublicKeys] = field(default_factory=dict, repr=False)
    seed_shares: dict[int, bytes] = field(default_factory=dict, repr=False)
    key_shares: dict[int, bytes] = field(default_factory=dict, repr=False)
    masked_with: frozenset[int] = frozenset()
    revealed: bool = False

    @classmethod
    def start(cls, nid: int, threshold: int, bits: int) -> SecAggClient:
        """A client with two fresh key pairs (mask agreement, share encryption)."""
        word_dtype(bits)
        (sk1, pk1), (sk2, pk2) = generate_key_pairs(), generate_key_pairs()
        keys = (public_key_to_bytes(pk1), public_key_to_bytes(pk2))
        return cls(nid, threshold, bits, private_key_to_bytes(sk1), private_key_to_bytes(sk2), keys)

    def to_record(self) -> dict[str, int | bytes | list[int] | list[bytes]]:
        """The state as a flat record of integers, bytes and their lists."""
        nbrs = sorted(self.neighbour_keys)
        return {
            "nid": self.nid,
            "threshold": self.threshold,
            "bits": self.bits,
            "sk1": self.sk1,
            "sk2": self.sk2,
            "pk1": self.keys[0],
            "pk2": self.keys[1],
            "seed": self.seed,
            "neighbours": nbrs,
            "neighbour_pk1": [self.neighbour_keys[j][0] for j in nbrs],
            "neighbour_pk2": [self.neighbour_keys[j][1] for j in nbrs],
            "seed_share_of": sorted(self.seed_shares),
            "seed_shares": [self.seed_shares[j] for j in sorted(self.seed_shares)],
            "key_share_of": sorted(self.key_shares),
            "key_shares": [self.key_shares[j] for j in sorted(self.key_shares)],
            "masked_with": sorted(self.masked_with),
            "revealed": int(self.revealed),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> SecAggClient:
        """The state :meth:`to_record` wrote (``SecAggError`` on a field of the wrong type)."""

        def get(name: str, kind: type) -> Any:
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SecAggError(f"secure aggregation state: {name!r} is not {kind.__name__}")
            return value

        def listed(name: str, kind: type) -> list[Any]:
            value = get(name, list)
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                raise SecAggError(f"secure aggregation state: {name!r} holds a non-{kind.__name__}")
            return value

        def paired(ids: str, values: str) -> dict[int, Any]:
            return dict(zip(listed(ids, int), listed(values, bytes), strict=True))

        nbrs = listed("neighbours", int)
        pk1, pk2 = listed("neighbour_pk1", bytes), listed("neighbour_pk2", bytes)
        return cls(
            get("nid", int),
            get("threshold", int),
            get("bits", int),
            get("sk1", bytes),
            get("sk2", bytes),
            (get("pk1", bytes), get("pk2", bytes)),
            get("seed", bytes),
            {j: (a, b) for j, a, b in zip(nbrs, pk1, pk2, strict=True)},
            paired("seed_share_of", "seed_shares"),
            paired("key_share_of", "key_shares"),
            frozenset(listed("masked_with", int)),
            bool(get("revealed", int)),
        )

    @property
    def commitment(self) -> bytes:
        """``SHA-256(label ‖ seed)``: sent with the shares, so that a server can tell a
        seed rebuilt from honest shares from one a lying neighbour's share spoilt."""
        if not self.seed:
            raise SecAggError(f"node {self.nid}: no seed before its keys are shared")
        return commitment(self.seed)

    def share_keys(self, neighbour_keys: Mapping[int, PublicKeys]) -> dict[int, bytes]:
        """Stage 1: the encrypted shares of this client's seed and private key, per neighbour."""
        if self.neighbour_keys:
            raise SecAggError(f"node {self.nid}: keys were already shared this round")
        if neighbour_keys.get(self.nid) != self.keys:
            raise SecAggError(f"node {self.nid}: its own public keys are not among its neighbours'")
        if len(neighbour_keys) < self.threshold:
            raise SecAggError(
                f"node {self.nid}: {len(neighbour_keys)} neighbours, fewer than the threshold "
                f"{self.threshold}"
            )
        if 2 * self.threshold <= len(neighbour_keys):
            raise SecAggError(
                f"node {self.nid}: threshold {self.threshold} is not more than half of its "
                f"{len(neighbour_keys)} neighbours (a server could rebuild both its seed and key)"
            )
        flat = [k for pair in neighbour_keys.values() for k in pair]
        if len(set(flat)) != len(flat):
            raise SecAggError(f"node {self.nid}: two neighbours share a public key")
        self.neighbour_keys = dict(neighbour_keys)
        self.seed = secrets.token_bytes(32)
        order = sorted(neighbour_keys)
        seed_shares = create_shares(self.seed, self.threshold, len(order))
        key_shares = create_shares(self.sk1, self.threshold, len(order))
        out: dict[int, bytes] = {}
        for nid, seed_share, key_share in zip(order, seed_shares, key_shares, strict=True):
            if nid == self.nid:
                self.seed_shares[nid], self.key_shares[nid] = seed_share, key_share
                continue
            plain = share_keys_plaintext_concat(self.nid, nid, seed_share, key_share)
            out[nid] = encrypt(_agreed(self.sk2, neighbour_keys[nid][1]), plain)
        return out

    def mask(self, words: np.ndarray, ciphertexts: Mapping[int, bytes]) -> np.ndarray:
        """Stage 2: keep the shares the neighbours sent; return ``words`` (fixed point modulo
        ``2**bits``) plus this client's own mask and its pairwise masks."""
        if not self.neighbour_keys or self.masked_with:
            raise SecAggError(f"node {self.nid}: masking out of order")
        if words.dtype != word_dtype(self.bits):
            raise SecAggError(
                f"node {self.nid}: words of {words.dtype}, not {word_dtype(self.bits)}"
            )
        if len(ciphertexts) + 1 < self.threshold:
            raise SecAggError(f"node {self.nid}: shares from too few neighbours to mask")
        for src, ciphertext in ciphertexts.items():
            if src not in self.neighbour_keys or src == self.nid:
                raise SecAggError(f"node {self.nid}: shares from {src}, not a neighbour")
            try:
                plain = decrypt(_agreed(self.sk2, self.neighbour_keys[src][1]), ciphertext)
            except InvalidToken as exc:
                raise SecAggError(f"node {self.nid}: shares from {src} do not decrypt") from exc
            sender, receiver, seed_share, key_share = share_keys_plaintext_separate(plain)
            if (sender, receiver) != (src, self.nid):
                raise SecAggError(
                    f"node {self.nid}: shares labelled {sender}->{receiver} from {src}"
                )
            self.seed_shares[src], self.key_shares[src] = seed_share, key_share
        self.masked_with = frozenset(ciphertexts)
        out = add_mod(words, expand_mask(self.seed, words.size, self.bits), self.bits)
        for other in sorted(self.masked_with):
            pairwise = expand_mask(
                _agreed(self.sk1, self.neighbour_keys[other][0]), words.size, self.bits
            )
            out = (
                add_mod(out, pairwise, self.bits)
                if self.nid > other
                else sub_mod(out, pairwise, self.bits)
            )
        return out

    def reveal(self, alive: Collection[int], dropped: Collection[int]) -> dict[int, bytes]:
        """Stage 3: shares of each alive neighbour's seed and each dropped one's private key
        (never both for one node; at least ``threshold`` alive)."""
        if not self.masked_with or self.revealed:
            raise SecAggError(f"node {self.nid}: unmasking out of order")
        alive_set, dropped_set = set(alive), set(dropped)
        if alive_set & dropped_set:
            raise SecAggError(f"node {self.nid}: nodes named both alive and dropped")
        if self.nid not in alive_set or len(alive_set) < self.threshold:
            raise SecAggError(f"node {self.nid}: fewer alive neighbours than the threshold")
        known = self.masked_with | {self.nid}
        if not alive_set | dropped_set <= known:
            raise SecAggError(f"node {self.nid}: asked about nodes it holds no shares of")
        self.revealed = True
        out = {nid: self.seed_shares[nid] for nid in alive_set}
        out.update({nid: self.key_shares[nid] for nid in dropped_set})
        return out


@dataclass
class SecAggServer:
    """The server's side of one round: who is in which stage, the masked sum, the unmasking."""

    neighbours: Mapping[int, frozenset[int]]
    threshold: int
    bits: int
    keys: dict[int, PublicKeys] = field(default_factory=dict)
    shared: dict[int, dict[int, bytes]] = field(default_factory=dict)
    commitments: dict[int, bytes] = field(default_factory=dict)
    """Each client's :attr:`SecAggClient.commitment` (sent with its shares)."""
    masked: set[int] = field(default_factory=set)
    total: np.ndarray | None = None

    def keys_for(self, nid: int) -> dict[int, PublicKeys]:
        """Stage 1's request: the public keys of ``nid``'s neighbours that sent keys."""
        return {j: self.keys[j] for j in self.neighbours[nid] if j in self.keys}

    def shares_for(self, nid: int) -> dict[int, bytes]:
        """Stage 2's request: the encrypted shares addressed to ``nid``."""
        return {src: out[nid] for src, out in self.shared.items() if nid in out}

    def add_masked(self, nid: int, words: np.ndarray, size: int) -> None:
        """Stage 2's reply: one client's masked vector into the running sum."""
        if nid not in self.shared or nid in self.masked:
            raise SecAggError(f"node {nid}: a masked vector out of turn")
        if words.dtype != word_dtype(self.bits) or words.shape != (size,):
            raise SecAggError(f"node {nid}: a masked vector of the wrong type or length")
        self.masked.add(nid)
        self.total = words.copy() if self.total is None else add_mod(self.total, words, self.bits)

    def unmask_request(self, nid: int) -> tuple[list[int], list[int]]:
        """Stage 3's request to ``nid``: its alive and its dropped neighbours."""
        around = self.neighbours[nid]
        alive = sorted(j for j in around if j in self.masked)
        dropped = sorted(j for j in around if j in self.shared and j not in self.masked)
        return alive, dropped

    def _seed_check(self, nid: int) -> Callable[[bytes], bool]:
        expected = self.commitments.get(nid)
        if expected is None:
            raise SecAggError(f"node {nid}: masked without a seed commitment")
        return lambda seed: len(seed) == 32 and commitment(seed) == expected

    def _key_check(self, nid: int) -> Callable[[bytes], bool]:
        public = self.keys[nid][0]
        return lambda private: _public_of(private) == public

    def unmask(self, replies: Mapping[int, Mapping[int, bytes]]) -> np.ndarray:
        """The sum of the alive clients' vectors (modulo ``2**bits``) from the shares that
        came back; ``SecAggError`` when some secret has fewer than ``threshold`` shares."""
        if self.total is None:
            raise SecAggError("no masked vector reached the server")
        pooled: dict[int, list[bytes]] = {}
        for replier, reply in replies.items():
            alive, dropped = self.unmask_request(replier) if replier in self.masked else ([], [])
            for owner in set(reply) & {*alive, *dropped}:  # only the shares it was asked for
                pooled.setdefault(owner, []).append(reply[owner])
        total, size = self.total, self.total.size
        for nid in sorted(self.shared):
            if nid not in self.masked and not self.neighbours[nid] & self.masked:
                continue  # dropped, and no alive node masked with it: nothing to remove
            shares = pooled.get(nid, [])
            if len(shares) < self.threshold:
                raise SecAggError(f"node {nid}: {len(shares)} shares, fewer than {self.threshold}")
            if nid in self.masked:
                seed = rebuild(shares, self.threshold, self._seed_check(nid))
                total = sub_mod(total, expand_mask(seed, size, self.bits), self.bits)
                continue
            key = rebuild(shares, self.threshold, self._key_check(nid))
            for other in sorted(j for j in self.neighbours[nid] if j in self.masked):
                pairwise = expand_mask(_agreed(key, self.keys[other][0]), size, self.bits)
                # ``other`` added this mask toward a lower id and subtracted it toward a higher
                total = (
                    sub_mod(total, pairwise, self.bits)
                    if other > nid
                    else add_mod(total, pairwise, self.bits)
                )
        return total
