from frontdesk.cli import app

app(prog_name="frontdesk")
