"""What the tests (and the benchmarks that start servers) share: real servers and tagsmith
processes (``servers``), real photos (``photos``), hostile inputs (``badinput``), the seed's own
snippets (``seed_snippets``), and the steps tests take through the API (``api``)."""
