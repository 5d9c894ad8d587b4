"""``apiary bench``: the paper's workloads (hotel, shop, retwis, counter) and their runner.

Layout: one module per workload (``hotel``, ``shop``, ``retwis``, ``counter``) holding its
apps, SQL, data and operation mix; ``workloads`` lists them; ``systems`` the contenders;
``runner`` the timed rounds; ``report`` the Markdown, JSON and charts; ``cli`` the command.

The workload modules are shipped into PostgreSQL for ``placement=db`` together with this
package's ``__init__``, so both import nothing but the standard library and ``apiary``.
"""
