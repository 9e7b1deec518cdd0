# service_daemon.py
import asyncio
import metabridge as meta

# 1. Crie um serviço e configure para execução em background
@meta.create("demo-service").daemon()
class Service:
    """
    Nossa classe de serviço que agrupa endpoints relacionados.
    O construtor aceita argumentos fornecidos pelo cliente durante a conexão.
    """
    def __init__(self, argumento: str) -> None:
        self.argumento = argumento

    # 2. Exponha métodos com decoradores claros e objetivos
    @meta.teste  # Define um endpoint chamado 'teste'
    def home(self) -> str:
        return "Mensagem da home do serviço!"

    @meta.function  # Usa o nome da função como nome do endpoint
    def get(self, outro_argumento: str) -> str:
        return f"{self.argumento} {outro_argumento}"

    @meta.function  # Suporte completo para funções assíncronas
    async def soma(self, a: int, b: int) -> str:
        # Operações async são executadas corretamente
        await asyncio.sleep(0.01)
        return f"A soma é: {a + b}"

# 3. Inicie o serviço em background
# O serviço é automaticamente inicializado quando o módulo é importado
handle = meta.run()

# Código opcional para manter o processo principal ativo
if __name__ == "__main__":
    print(f"Serviço 'demo-service' executando em background (PID {handle.pid}). Pressione Ctrl+C para finalizar.")
    try:
        handle.join()  # Aguarda a finalização do serviço
    except KeyboardInterrupt:
        handle.stop()
        print("Serviço finalizado com sucesso.")
