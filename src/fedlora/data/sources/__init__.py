"""One module per registry source: its pin (:class:`~fedlora.data.provision.Source`) and an
``extract`` function that turns the verified archive into plain records."""
