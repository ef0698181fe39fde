from tests.support.redis import redis_factory, redis_server  # noqa: F401
