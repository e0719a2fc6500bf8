"""Operations: the ``prefork`` command, its settings, config files, logging and process chores.

Layer four of four (``core`` < ``engine`` < ``http`` < ``ops``): everything an
operator touches (options, ``prefork.toml``, pidfiles, users, systemd,
``prefork status``) lives here and turns into attributes of an engine server.
"""
