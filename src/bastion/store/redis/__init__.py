"""Redis implementations of the gateway's shared-state ports (scale-out mode).

:mod:`bastion.store.redis.counters` implements :class:`bastion.gateway.quota.Counters`
and :mod:`bastion.store.redis.cache` implements
:class:`bastion.gateway.cache_store.CacheBackend` and
:class:`bastion.gateway.cache_store.SemanticIndex`, so every replica of a
deployment shares one set of limits, budgets and cached responses.
"""
