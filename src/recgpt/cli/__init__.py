"""The `recgpt` command line (typer).

Every command runs torch, faiss or llama.cpp on a few shared cores, where their OpenMP threads
spin-wait and make each other up to 10x slower: one OpenMP thread unless the user set OMP_NUM_THREADS.
"""

from recgpt.settings import limit_native_threads

limit_native_threads()
