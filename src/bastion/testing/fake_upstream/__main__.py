"""``python -m bastion.testing.fake_upstream``: run the fake upstream server."""

from bastion.testing.fake_upstream.server import main

if __name__ == "__main__":
    main()
