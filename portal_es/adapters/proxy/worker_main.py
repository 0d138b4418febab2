"""Entry point of a proxy worker process: `python -m portal_es.adapters.proxy.worker_main FD`.

Separate from `worker` so that running it does not import `worker` twice (once through the
package, once as __main__).
"""

import sys

from portal_es.adapters.proxy.worker import main

if __name__ == "__main__":
    main(sys.argv)
